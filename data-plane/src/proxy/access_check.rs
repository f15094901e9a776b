//! `atrium access-check`: what API management says about one request, without starting
//! anything: the router that takes it, that router's API, how the API's callers
//! authenticate, the application the credential belongs to, the subscription and plan that
//! apply, and the answer. The credential goes through the same extraction and the same
//! decision as on a data plane ([`super::apim::identify`]); plan counters start full (a
//! fresh data plane), so the answer is the first request's.

use std::sync::Arc;

use atrium_proto::v1::SnapshotBody;
use atrium_routing::apim::{ApiAuth, KeySource, Limit};
use http::{HeaderValue, header};
use serde::Serialize;

use super::Compiled;
use super::jwt::JwksCache;

/// The credential a request carries.
#[derive(Debug, Clone)]
pub enum Credential {
    /// None.
    None,
    /// An API key, placed where the API's key source says.
    Key(String),
    /// A JWT, in `Authorization: Bearer`.
    Jwt(String),
}

/// A plan as shown.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct PlanView {
    /// `namespace/name`.
    pub id: String,
    /// E.g. `100 per 1m0s (bucket subscription)`.
    pub rate_limit: Option<String>,
    /// E.g. `10000 per 1h0m0s (bucket subscription)`.
    pub quota: Option<String>,
}

impl PlanView {
    /// How `plan` is shown.
    pub fn of(plan: &atrium_routing::apim::Plan) -> PlanView {
        PlanView {
            id: plan.id.clone(),
            rate_limit: plan.rate.as_ref().map(Limit::to_string),
            quota: plan.quota.as_ref().map(Limit::to_string),
        }
    }
}

/// What API management says about a request.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Explanation {
    /// The router that takes the request, if any.
    pub router: Option<String>,
    /// The API the router belongs to, if any.
    pub api: Option<String>,
    /// How the API's callers authenticate.
    pub authentication: Option<String>,
    /// The caller's application (`appId`).
    pub application: Option<String>,
    /// The subscription that covers the request.
    pub subscription: Option<String>,
    /// Its plan.
    pub plan: Option<PlanView>,
    /// The status the first such request gets (200: let through to the backend).
    pub status: u16,
    /// `allowed`, `no-api` (a route of no API: served without API management),
    /// `not-found`, or the problem type of the refusal.
    pub result: String,
    /// Why.
    pub detail: String,
}

/// Why a request cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The configuration does not compile.
    #[error("configuration: {0}")]
    Compile(#[from] super::CompileError),
    /// The URL is not an absolute http(s) URL.
    #[error("{0:?} is not an absolute URL such as https://api.example.com/crm/employees")]
    Url(String),
    /// A header that is not one.
    #[error("header {0:?}: not a valid header name and value")]
    Header(String),
    /// The method is not one.
    #[error("{0:?} is not an HTTP method")]
    Method(String),
}

/// How callers of an API authenticate, in words.
pub(crate) fn describe_auth(auth: Option<&ApiAuth>) -> String {
    match auth {
        Some(ApiAuth::Key(KeySource::Default)) => "API key (Authorization: Bearer KEY, or ?api_key=KEY)".into(),
        Some(ApiAuth::Key(KeySource::Header { name, scheme: Some(s) })) => format!("API key ({name}: {s} KEY)"),
        Some(ApiAuth::Key(KeySource::Header { name, scheme: None })) => format!("API key ({name}: KEY)"),
        Some(ApiAuth::Key(KeySource::Query(q))) => format!("API key (?{q}=KEY)"),
        Some(ApiAuth::Jwt(j)) => format!("JWT (application from claim {:?})", j.app_id_claim),
        Some(ApiAuth::Unsupported(why)) => format!("none that works: {why}"),
        None => "none: the API is not configured".into(),
    }
}

/// Explains `method url` with `extra` headers, carrying `credential`, under the
/// configuration `body`.
pub async fn explain(
    body: SnapshotBody,
    method: &str,
    url: &str,
    extra: &[(String, String)],
    credential: &Credential,
) -> Result<Explanation, ExplainError> {
    let rt = Compiled::build(body, 1)?;
    let uri: http::Uri = url.parse().map_err(|_| ExplainError::Url(url.into()))?;
    let host = uri.host().ok_or_else(|| ExplainError::Url(url.into()))?.to_string();
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ExplainError::Method(method.into()))?;
    let mut out = Explanation {
        router: None,
        api: None,
        authentication: None,
        application: None,
        subscription: None,
        plan: None,
        status: 404,
        result: "not-found".into(),
        detail: "no router matches".into(),
    };
    let path = match atrium_routing::path_security::sanitize(uri.path()) {
        Ok(p) => p,
        Err(e) => {
            (out.status, out.result, out.detail) = (400, "bad-request".into(), e.to_string());
            return Ok(out);
        }
    };
    let mut headers = http::HeaderMap::new();
    for (k, v) in extra {
        let name = http::HeaderName::try_from(k.as_str()).map_err(|_| ExplainError::Header(k.clone()))?;
        let value = HeaderValue::from_str(v).map_err(|_| ExplainError::Header(k.clone()))?;
        headers.append(name, value);
    }
    let mut query = uri.query().map(str::to_string);
    let view_headers = headers.clone();
    let view = atrium_routing::request::RequestView::new(
        method.as_str(),
        &host,
        &path,
        query.as_deref(),
        &view_headers,
        "192.0.2.1:1234",
    );
    let req = atrium_routing::Request { entry_point: None, uplink: None, path: &path, view };
    let index = match atrium_routing::decide(&rt.table, &req) {
        atrium_routing::Decision::NotFound => return Ok(out),
        atrium_routing::Decision::Refused { router, answer } => {
            let (status, _, why) = answer.into_parts();
            let why: Option<std::borrow::Cow<'static, str>> = why;
            out.router = Some(rt.table.routers()[router].id.clone());
            (out.status, out.result) = (status.as_u16(), "refused-by-router".into());
            out.detail = why.unwrap_or_default().into_owned();
            return Ok(out);
        }
        atrium_routing::Decision::Route(i) => i,
    };
    let router = &rt.table.routers()[index];
    out.router = Some(router.id.clone());
    let Some(api) = router.api.as_deref() else {
        (out.status, out.result) = (200, "no-api".into());
        out.detail = "the route belongs to no API: served without API management".into();
        return Ok(out);
    };
    out.api = Some(api.to_string());
    let auth = rt.access.auth(api);
    out.authentication = Some(describe_auth(auth));
    // The credential, where a client would put it.
    let bearer = |t: &str| HeaderValue::from_str(&format!("Bearer {t}")).ok();
    match (credential, auth) {
        (Credential::None, _) => {}
        (Credential::Key(k), Some(ApiAuth::Key(KeySource::Header { name, scheme }))) => {
            let v = match scheme {
                Some(s) => format!("{s} {k}"),
                None => k.clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(name.clone(), v);
            }
        }
        (Credential::Key(k), Some(ApiAuth::Key(KeySource::Query(q)))) => {
            let pair = format!("{q}={k}");
            query = Some(match query {
                Some(existing) if !existing.is_empty() => format!("{existing}&{pair}"),
                _ => pair,
            });
        }
        (Credential::Key(t) | Credential::Jwt(t), _) => {
            if let Some(v) = bearer(t) {
                headers.insert(header::AUTHORIZATION, v);
            }
        }
    }
    let mut parts = http::Request::builder()
        .method(method)
        .uri(url)
        .body(())
        .map_err(|_| ExplainError::Url(url.into()))?
        .into_parts()
        .0;
    parts.headers = headers;
    let jwks = Arc::new(JwksCache::default());
    match super::apim::identify(&rt, &jwks, api, &mut parts, query.as_deref()).await {
        Ok((grant, _)) => {
            if let Err(r) = super::apim::operation(&rt, &grant, parts.method.as_str(), parts.uri.path()) {
                (out.status, out.result, out.detail) = (r.status.as_u16(), r.kind.into(), r.detail.clone());
                out.application = Some(grant.app.app_id.clone());
                out.subscription = Some(grant.subscription.id.clone());
                return Ok(out);
            }
            out.application = Some(grant.app.app_id.clone());
            out.subscription = Some(grant.subscription.id.clone());
            let plan = &grant.subscription.plan;
            out.plan = Some(PlanView::of(plan));
            (out.status, out.result) = (200, "allowed".into());
            out.detail = "let through to the backend, within the plan".into();
        }
        Err(r) => {
            (out.status, out.result, out.detail) = (r.status.as_u16(), r.kind.into(), r.detail);
        }
    }
    Ok(out)
}
