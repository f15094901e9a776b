//! API management at the gateway: a request to a route of an API (`hub.traefik.io/api`)
//! goes on only with a key of an application subscribed to that API, within the plan of
//! the subscription; the key is taken out before the request goes upstream. Refusals are
//! `application/problem+json` with a stable `type` per cause:
//! - 401 `missing-credentials`, `invalid-credentials`, `unsupported-authentication`;
//! - 403 `suspended`, `not-subscribed`, `unknown-application` (a valid token naming an
//!   application that does not exist), `operation-not-allowed` (outside the
//!   subscription's operation filter);
//! - 404 `unknown-operation`, 405 `method-not-allowed` (with `Allow`): the API validates
//!   method and path, and its spec defines no such operation;
//! - 429 `rate-limited`, `quota-exceeded` (with `Retry-After`);
//! - 503 `limits-unavailable`: Redis holds the counters, does not answer, and the failure
//!   policy is `closed`.
//!
//! The API's `cors` runs first: a preflight is answered before any key is asked for (with
//! `Authorization` allowed when every header is), and refusals carry the CORS headers.
//! Every answer of an API route says what is left of the plan (`X-RateLimit-Remaining`,
//! `X-Quota-Remaining`). The decision itself is `atrium_routing::apim`; the counters live
//! in the [`Gateway`], outside the swapped table.

use std::time::Duration;

use atrium_routing::apim::{ApiAuth, Grant, KeySource, Outcome, Verdict};
use atrium_routing::middleware::limits::Admission;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::jwt::{JwksCache, TokenAt};
use super::plan_limits::FailurePolicy;
use super::{Compiled, Gateway};
use crate::body::{self, Body};

/// What API management says about a request.
pub(super) enum ApiStep {
    /// Go on now; the query parameter that carried the key, to take out.
    Go(Outcome, Option<String>),
    /// Go on after this wait (a rate limit that allows a short delay).
    Wait(Duration, Outcome, Option<String>),
    /// Refused.
    Answer(Response<Body>),
}

/// An `application/problem+json` answer (RFC 9457).
fn problem(status: StatusCode, kind: &str, detail: &str) -> Response<Body> {
    let doc = serde_json::json!({
        "type": format!("https://atrium.dev/problems/{kind}"),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = Response::new(body::full(doc.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Puts what is left of the plan on an answer.
pub(super) fn remaining_headers(h: &mut HeaderMap, o: &Outcome) {
    if let Some(n) = o.rate_remaining {
        h.insert(HeaderName::from_static("x-ratelimit-remaining"), HeaderValue::from(n));
    }
    if let Some(n) = o.quota_remaining {
        h.insert(HeaderName::from_static("x-quota-remaining"), HeaderValue::from(n));
    }
}

/// Answers a CORS preflight that asks for `Authorization` with it in
/// `Access-Control-Allow-Headers` when the API allows every header (`*`): a browser does
/// not take the wildcard to cover `Authorization`, so the key could not be sent otherwise.
pub(super) fn echo_authorization(request: &HeaderMap, answer: &mut HeaderMap) {
    let asks = request
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("authorization"));
    let allow = answer.get(header::ACCESS_CONTROL_ALLOW_HEADERS).and_then(|v| v.to_str().ok()).unwrap_or("");
    let tokens: Vec<&str> = allow.split(',').map(str::trim).collect();
    if asks && tokens.contains(&"*") && !tokens.iter().any(|t| t.eq_ignore_ascii_case("authorization")) {
        if let Ok(v) = HeaderValue::from_str(&format!("{allow},Authorization")) {
            answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
}

/// The key a request carries and where: a header (taken out here) or a query parameter
/// (named, for the outgoing request to leave out).
fn take_key(source: &KeySource, headers: &mut HeaderMap, query: Option<&str>) -> (Option<String>, Option<String>) {
    let from_header = |name: &HeaderName, scheme: Option<&str>| {
        let s = KeySource::Header { name: name.clone(), scheme: scheme.map(str::to_string) };
        s.find(headers, None).map(str::to_string)
    };
    let (key, header, param) = match source {
        KeySource::Default => match from_header(&header::AUTHORIZATION, Some("Bearer")) {
            Some(k) => (Some(k), Some(header::AUTHORIZATION), None),
            None => (source.find(headers, query).map(str::to_string), None, Some("api_key".to_string())),
        },
        KeySource::Header { name, scheme } => (from_header(name, scheme.as_deref()), Some(name.clone()), None),
        KeySource::Query(q) => (source.find(headers, query).map(str::to_string), None, Some(q.clone())),
    };
    if let (Some(_), Some(h)) = (&key, header) {
        headers.remove(h);
    }
    let param = key.as_ref().and(param);
    (key, param)
}

/// Why a request to an API is refused before its plan is counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401, 403 or 503.
    pub status: StatusCode,
    /// The stable problem type.
    pub kind: &'static str,
    /// Why, for the caller.
    pub detail: String,
}

impl Refusal {
    fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Refusal {
        Refusal { status, kind, detail: detail.into() }
    }

    /// The `application/problem+json` answer.
    pub(super) fn answer(&self) -> Response<Body> {
        problem(self.status, self.kind, &self.detail)
    }
}

/// Who calls API `api`, by the rules of `rt`: the grant that lets the request through
/// (and the query parameter that carried the credential, to take out), or why not. The
/// credential is taken out of the headers here; with JWT, `forwardHeaders` are set.
pub(super) async fn identify<'a>(
    rt: &'a Compiled,
    jwks: &JwksCache,
    api: &'a str,
    parts: &mut Parts,
    query: Option<&str>,
) -> Result<(Grant<'a>, Option<String>), Refusal> {
    let (verdict, param) = match rt.access.auth(api) {
        Some(ApiAuth::Key(source)) => {
            let (key, param) = take_key(source, &mut parts.headers, query);
            (rt.access.decide(api, key.as_deref()), param)
        }
        Some(ApiAuth::Jwt(_)) => Box::pin(jwt_caller(rt, jwks, api, parts, query)).await?,
        Some(ApiAuth::Unsupported(why)) => {
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unsupported-authentication", why.clone()));
        }
        None => {
            let why = format!("API {api} is not configured");
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "unsupported-authentication", why));
        }
    };
    grant_of(verdict).map(|g| (g, param))
}

/// The grant of a verdict, or the refusal it means.
pub(super) fn grant_of(verdict: Verdict<'_>) -> Result<Grant<'_>, Refusal> {
    let refused = |status, kind, why: String| Err(Refusal::new(status, kind, why));
    match verdict {
        Verdict::Granted(g) => Ok(g),
        Verdict::NoCredentials => refused(
            StatusCode::UNAUTHORIZED,
            "missing-credentials",
            "this API needs an API key (Authorization: Bearer KEY)".into(),
        ),
        Verdict::UnknownKey => refused(StatusCode::UNAUTHORIZED, "invalid-credentials", "unknown API key".into()),
        Verdict::Suspended { what, .. } => {
            refused(StatusCode::FORBIDDEN, "suspended", format!("the {what} is suspended"))
        }
        Verdict::UnknownApplication => refused(
            StatusCode::FORBIDDEN,
            "unknown-application",
            "the token names an application that does not exist".into(),
        ),
        Verdict::NotSubscribed { app } => refused(
            StatusCode::FORBIDDEN,
            "not-subscribed",
            format!("application {} has no subscription to this API", app.app_id),
        ),
    }
}

/// A refused operation, with the methods the path has (405).
pub(super) struct OperationRefused {
    refusal: Refusal,
    allow: Option<HeaderValue>,
}

impl OperationRefused {
    /// The answer, with `Allow` on a 405.
    pub(super) fn answer(self) -> Response<Body> {
        let mut r = self.refusal.answer();
        if let Some(allow) = self.allow {
            r.headers_mut().insert(header::ALLOW, allow);
        }
        r
    }
}

impl std::ops::Deref for OperationRefused {
    type Target = Refusal;
    fn deref(&self) -> &Refusal {
        &self.refusal
    }
}

/// Whether the caller of `grant` may make this request's operation: defined by the API's
/// spec (404, 405 when it validates method and path), and included in the subscription's
/// operation filter (403).
pub(super) fn operation(rt: &Compiled, grant: &Grant<'_>, method: &str, path: &str) -> Result<(), OperationRefused> {
    use atrium_routing::apim::OperationRefusal as O;
    let refused = |status, kind, detail: String, allow: Option<HeaderValue>| OperationRefused {
        refusal: Refusal::new(status, kind, detail),
        allow,
    };
    match rt.access.check_operation(grant, method, path) {
        Ok(()) => Ok(()),
        Err(O::NoPath) => {
            Err(refused(StatusCode::NOT_FOUND, "unknown-operation", "the API's spec defines no such path".into(), None))
        }
        Err(O::WrongMethod(methods)) => {
            let list = methods.join(", ");
            let detail = format!("the API's spec defines this path for {list} only");
            Err(refused(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                detail,
                HeaderValue::from_str(&list).ok(),
            ))
        }
        Err(O::Filtered) => {
            let detail = format!("subscription {} does not include this operation", grant.subscription.id);
            Err(refused(StatusCode::FORBIDDEN, "operation-not-allowed", detail, None))
        }
    }
}

impl Gateway {
    /// Checks a request to API `api` against the rules and the plan counters of `rt`.
    pub(super) async fn api_access(&self, rt: &Compiled, api: &str, parts: &mut Parts, query: Option<&str>) -> ApiStep {
        let (grant, param) = match identify(rt, &self.jwks, api, parts, query).await {
            Ok(g) => g,
            Err(refusal) => return ApiStep::Answer(refusal.answer()),
        };
        if let Err(refused) = operation(rt, &grant, parts.method.as_str(), parts.uri.path()) {
            return ApiStep::Answer(refused.answer());
        }
        match self.count(&grant).await {
            Counted::Go(o) => ApiStep::Go(o, param),
            Counted::Wait(d, o) => ApiStep::Wait(d, o, param),
            Counted::Answer(r) => ApiStep::Answer(r),
        }
    }

    /// Counts a request under `grant` against its plan: go (now or after a wait), or the
    /// answer (429, or 503 when Redis does not answer and the policy is `closed`).
    pub(super) async fn count(&self, grant: &Grant<'_>) -> Counted {
        let outcome = match self.limits.admit(grant, self.apim.max_rate_limit_delay).await {
            Ok(o) => o,
            Err(_) => {
                self.metrics.apim.store_failures.inc();
                if self.apim.redis_failure == FailurePolicy::Closed {
                    let why = "the plan's counters are unavailable; try again shortly";
                    return Counted::Answer(problem(StatusCode::SERVICE_UNAVAILABLE, "limits-unavailable", why));
                }
                return Counted::Go(Outcome { admission: Admission::Now, rate_remaining: None, quota_remaining: None });
            }
        };
        let plan = grant.subscription.plan.id.as_str();
        crate::telemetry::note("atrium.application", &grant.app.app_id);
        crate::telemetry::note("atrium.plan", plan);
        match outcome.admission {
            Admission::Now => {
                self.metrics.apim.decision(plan, "allowed");
                Counted::Go(outcome)
            }
            Admission::After(d) => {
                self.metrics.apim.decision(plan, "delayed");
                Counted::Wait(d, outcome)
            }
            Admission::Refuse(retry) => {
                self.metrics.apim.decision(plan, "rejected");
                let (kind, why) = if outcome.quota_remaining == Some(0) {
                    ("quota-exceeded", "the plan's quota is used up")
                } else {
                    ("rate-limited", "the plan's rate limit is reached")
                };
                let mut r = problem(StatusCode::TOO_MANY_REQUESTS, kind, why);
                let secs = retry.as_secs_f64().ceil().max(1.0) as u64;
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                remaining_headers(r.headers_mut(), &outcome);
                Counted::Answer(r)
            }
        }
    }
}

/// What a plan says about a request.
pub(super) enum Counted {
    /// Go on now.
    Go(Outcome),
    /// Go on after this wait.
    Wait(Duration, Outcome),
    /// Refused: this answer.
    Answer(Response<Body>),
}

/// The verdict on a request to an API with JWT authentication, and the query parameter
/// that carried the token (to take out); a refusal when the token is missing or does not
/// verify. Headers named in `forwardHeaders` are replaced by the token's claims (a client's
/// own values never reach the backend).
async fn jwt_caller<'a>(
    rt: &'a Compiled,
    jwks: &JwksCache,
    api: &'a str,
    parts: &mut Parts,
    query: Option<&str>,
) -> Result<(Verdict<'a>, Option<String>), Refusal> {
    let Some(check) = rt.jwt.get(api) else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unsupported-authentication",
            format!("API {api} has no JWT rules"),
        ));
    };
    let Some((token, at)) = check.token(&parts.headers, query) else {
        let why = "this API needs a token (Authorization: Bearer JWT)";
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "missing-credentials", why));
    };
    let token = token.to_string();
    let claims = check
        .verify(&token, jwks)
        .await
        .map_err(|why| Refusal::new(StatusCode::UNAUTHORIZED, "invalid-credentials", why))?;
    let app_id = match claims.get(check.app_id_claim()) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            let why = format!("the token has no {} claim", check.app_id_claim());
            return Err(Refusal::new(StatusCode::UNAUTHORIZED, "invalid-credentials", why));
        }
    };
    for (header, claim) in check.forward_headers() {
        let Ok(name) = HeaderName::try_from(header.as_str()) else { continue };
        parts.headers.remove(&name);
        let value = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => continue,
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, v);
        }
    }
    if matches!(at, TokenAt::Header) && check.strip_authorization() {
        parts.headers.remove(header::AUTHORIZATION);
    }
    // The query parameter that may carry a token never goes upstream, wherever the token
    // that was checked came from.
    let param = match at {
        TokenAt::Query(q) => Some(q),
        TokenAt::Header => Some(check.token_query_key().to_string()).filter(|q| !q.is_empty()),
    };
    Ok((rt.access.decide_app(api, &app_id), param))
}

/// `query` without parameter `name` (the key it carried), `None` when nothing is left.
pub(super) fn without_param(query: Option<&str>, name: &str) -> Option<String> {
    let kept: Vec<&str> = query?.split('&').filter(|p| p.split('=').next() != Some(name) && !p.is_empty()).collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_taken_from_where_it_was_found() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(take_key(&KeySource::Default, &mut h, Some("api_key=k2")), (Some("k1".into()), None));
        assert!(h.get("authorization").is_none(), "the header is gone");
        assert_eq!(
            take_key(&KeySource::Default, &mut h, Some("a=1&api_key=k2")),
            (Some("k2".into()), Some("api_key".into()))
        );
        assert_eq!(take_key(&KeySource::Default, &mut h, Some("a=1")), (None, None));
        h.insert("x-key", "k3".parse().unwrap());
        let header = KeySource::Header { name: HeaderName::from_static("x-key"), scheme: None };
        assert_eq!(take_key(&header, &mut h, None), (Some("k3".into()), None));
        assert!(h.get("x-key").is_none());
    }

    #[test]
    fn only_the_key_parameter_leaves_the_query() {
        assert_eq!(without_param(Some("a=1&api_key=k&b=2"), "api_key").as_deref(), Some("a=1&b=2"));
        assert_eq!(without_param(Some("api_key=k"), "api_key"), None);
        assert_eq!(without_param(Some("api_key_x=1"), "api_key").as_deref(), Some("api_key_x=1"));
    }
}
