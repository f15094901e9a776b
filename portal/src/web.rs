//! What every request goes through: which APIPortal it is for, its session, the CSRF token
//! and same-origin check of every write, the security headers of every answer, and the
//! routes of the pages and of the REST API.

use std::sync::Arc;

use atrium_proto::v1 as pb;
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::store::{Session, StoreError};
use crate::{PORTAL_HEADER, Portal};

/// The session cookie: `__Host-` (Secure, Path=/, no Domain), HttpOnly, SameSite=Lax.
pub(crate) const SESSION_COOKIE: &str = "__Host-atrium-session";
/// The cookie holding the login form's CSRF token (before there is a session).
pub(crate) const LOGIN_CSRF_COOKIE: &str = "__Host-atrium-login";
/// How long a session lasts.
pub(crate) const SESSION_TTL_S: i64 = 12 * 3600;

/// The portal's routes.
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(crate::pages::catalog))
        .route("/login", get(crate::pages::login_form).post(crate::pages::login))
        .route("/login/oidc", get(crate::pages::oidc_start))
        .route(crate::oidc::CALLBACK, get(crate::pages::oidc_callback))
        .route("/logout", post(crate::pages::logout))
        .route("/account/password", get(crate::pages::password_form).post(crate::pages::password))
        .route("/apis/{*id}", get(crate::pages::api_page))
        .route("/docs/{name}", get(crate::pages::doc_page))
        .route("/apps", get(crate::pages::apps).post(crate::pages::create_app))
        .route("/apps/{id}/delete", post(crate::pages::delete_app))
        .route("/apps/{id}/keys", post(crate::pages::create_key))
        .route("/apps/{id}/subscriptions", post(crate::pages::subscribe))
        .route("/keys/{id}/revoke", post(crate::pages::revoke_key))
        .route("/subscriptions/{id}/delete", post(crate::pages::unsubscribe))
        .route("/assets/logo", get(logo))
        .route(
            "/assets/portal.css",
            get(|| async { asset("text/css; charset=utf-8", include_str!("../assets/portal.css")) }),
        )
        .route(
            "/assets/portal.js",
            get(|| async { asset("text/javascript; charset=utf-8", include_str!("../assets/portal.js")) }),
        )
        .merge(crate::rest::routes())
        .fallback(|| async { Fail::NotFound })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(portal)
}

/// The APIPortal's logo, as fetched.
async fn logo(
    axum::extract::State(p): axum::extract::State<Arc<Portal>>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let cx = ctx(&p, &headers).await?;
    let (ct, bytes) = p.logos.get(&cx.site.logo_url).ok_or(Fail::NotFound)?;
    Ok(([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, "public, max-age=3600")], bytes).into_response())
}

fn asset(ct: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ct), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// Headers on every answer: no framing, no sniffing, scripts and styles from the portal
/// only (the try-it console may call any API server), no caching of personal pages.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src *; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    r
}

/// Why a request is refused, as a page or as JSON (see [`Fail::json`]).
#[derive(Debug)]
pub(crate) enum Fail {
    /// No such page, or one the user may not see (never 403: a hidden API does not exist).
    NotFound,
    /// Not signed in (pages: to the login form; REST: 401).
    Login,
    /// Signed in with a one-time password: it must be changed first (pages: to the form;
    /// REST: 403).
    PasswordChange,
    /// A write without a valid CSRF token or from another origin.
    Forbidden(String),
    /// Conflicts with what exists (409).
    Conflict(String),
    /// Bad input (422).
    Invalid(String),
    /// Too many attempts (429), with the seconds to wait.
    TooMany(u64),
    /// Something the portal depends on does not answer (503).
    Unavailable(String),
    /// Something on our side (500; the details are logged).
    Internal(String),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        match e {
            StoreError::Conflict(m) => Fail::Conflict(m),
            StoreError::NotFound(_) => Fail::NotFound,
            StoreError::Invalid(m) => Fail::Invalid(m),
            e @ StoreError::Db { .. } => Fail::Internal(e.to_string()),
        }
    }
}

impl Fail {
    fn status(&self) -> StatusCode {
        match self {
            Fail::NotFound => StatusCode::NOT_FOUND,
            Fail::Login => StatusCode::UNAUTHORIZED,
            Fail::PasswordChange => StatusCode::FORBIDDEN,
            Fail::Forbidden(_) => StatusCode::FORBIDDEN,
            Fail::Conflict(_) => StatusCode::CONFLICT,
            Fail::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Fail::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Fail::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Fail::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Fail::NotFound => "not found".into(),
            Fail::Login => "sign in first".into(),
            Fail::PasswordChange => "change your one-time password first (POST /api/account/password)".into(),
            Fail::Forbidden(m) | Fail::Conflict(m) | Fail::Invalid(m) | Fail::Unavailable(m) => m.clone(),
            Fail::TooMany(s) => format!("too many attempts: try again in {s} s"),
            Fail::Internal(m) => {
                tracing::error!(error = %m, "portal request failed");
                "internal error".into()
            }
        }
    }

    /// The refusal as JSON (`{"error": …}`).
    pub(crate) fn json(self) -> Response {
        let mut r = (self.status(), axum::Json(serde_json::json!({"error": self.message()}))).into_response();
        if let Fail::TooMany(s) = self {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl IntoResponse for Fail {
    /// The refusal as a page.
    fn into_response(self) -> Response {
        match self {
            Fail::Login => return redirect("/login"),
            Fail::PasswordChange => return redirect("/account/password"),
            _ => {}
        }
        let status = self.status();
        let page = crate::pages::ErrorPage { title: "atrium".into(), status: status.as_u16(), message: self.message() };
        let mut r = (status, crate::pages::html(&page)).into_response();
        if let Fail::TooMany(s) = self {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// A `303 See Other` to `to` (a path: redirects stay relative, so the portal works on any
/// host and port).
pub(crate) fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A request's view: its APIPortal, the snapshot, and its session when signed in.
pub(crate) struct Ctx {
    /// The APIPortal.
    pub site: pb::PortalSite,
    /// The snapshot.
    pub body: Arc<pb::SnapshotBody>,
    /// The session, if any.
    pub session: Option<Session>,
    /// The origin the request was made at (`https://host:port`).
    pub origin: String,
    /// The APIPortal's logo is served at `/assets/logo`.
    pub logo: bool,
}

impl Ctx {
    /// The signed-in session, or [`Fail::Login`].
    pub fn user(&self) -> Result<&Session, Fail> {
        self.session.as_ref().ok_or(Fail::Login)
    }

    /// The signed-in session of a user whose password is not a one-time password.
    pub fn member(&self) -> Result<&Session, Fail> {
        let s = self.user()?;
        if s.user.must_change { Err(Fail::PasswordChange) } else { Ok(s) }
    }
}

/// The value of cookie `name`.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for `name` (`max_age` 0 clears it).
pub(crate) fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// The APIPortal the data plane names (a route without `hub.traefik.io/api-portal` names
/// none, and serves no portal).
fn site(body: &pb::SnapshotBody, headers: &HeaderMap) -> Option<pb::PortalSite> {
    let id = headers.get(PORTAL_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())?;
    body.portals.iter().find(|p| p.id == id).cloned()
}

/// The origin a request was made at, as the data plane forwarded it.
fn origin_of(headers: &HeaderMap) -> String {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "http" || *p == "https")
        .unwrap_or("https");
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    format!("{proto}://{host}")
}

/// The client's address, as the data plane appended it to `X-Forwarded-For`.
pub(crate) fn client_of(headers: &HeaderMap) -> String {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .next_back()
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The request's portal, snapshot and session; an unknown portal is [`Fail::NotFound`].
pub(crate) async fn ctx(p: &Portal, headers: &HeaderMap) -> Result<Ctx, Fail> {
    let body = p.source.body();
    let site = site(&body, headers).ok_or(Fail::NotFound)?;
    let session = match cookie(headers, SESSION_COOKIE) {
        Some(token) => {
            let (token, portal) = (token.to_string(), site.id.clone());
            p.store.run(move |s| s.session(&token, &portal)).await?
        }
        None => None,
    };
    let logo = p.logos.available(&site.logo_url);
    Ok(Ctx { site, body, session, origin: origin_of(headers), logo })
}

/// A write must come from the portal's own origin (or one of its `trustedUrls`) when the
/// browser names one, and carry the session's CSRF token.
pub(crate) fn check_write(cx: &Ctx, headers: &HeaderMap, token: Option<&str>) -> Result<(), Fail> {
    check_origin(cx, headers)?;
    let session = cx.user()?;
    match token {
        Some(t) if crate::auth::same(t, &session.csrf) => Ok(()),
        _ => Err(Fail::Forbidden("missing or wrong CSRF token".into())),
    }
}

/// The `Origin` (or, without one, the `Referer`) of a write must be the portal's.
pub(crate) fn check_origin(cx: &Ctx, headers: &HeaderMap) -> Result<(), Fail> {
    let named = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string).or_else(|| {
        let r = headers.get(header::REFERER)?.to_str().ok()?;
        let rest = r.split_once("://")?;
        Some(format!("{}://{}", rest.0, rest.1.split('/').next().unwrap_or("")))
    });
    let Some(o) = named else { return Ok(()) };
    let trusted = |u: &String| u.trim_end_matches('/').eq_ignore_ascii_case(&o);
    if o.eq_ignore_ascii_case(&cx.origin) || cx.site.trusted_urls.iter().any(trusted) {
        Ok(())
    } else {
        Err(Fail::Forbidden(format!("a write from origin {o} is refused (the portal is at {})", cx.origin)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-atrium-session=tok; x__Host-atrium-session=no"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(SESSION_COOKIE, "v", 10);
        for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(attr), "{c}");
        }
    }

    #[test]
    fn the_portal_header_picks_the_site_and_an_unknown_one_is_none() {
        let body = pb::SnapshotBody {
            portals: vec![
                pb::PortalSite { id: "a/p".into(), ..Default::default() },
                pb::PortalSite { id: "b/p".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert!(site(&body, &h).is_none(), "none named");
        h.insert(PORTAL_HEADER, HeaderValue::from_static("b/p"));
        assert_eq!(site(&body, &h).unwrap().id, "b/p");
        h.insert(PORTAL_HEADER, HeaderValue::from_static("c/p"));
        assert!(site(&body, &h).is_none());
    }

    #[test]
    fn writes_from_other_origins_are_refused() {
        let cx = Ctx {
            site: pb::PortalSite { trusted_urls: vec!["https://portal.example.com/".into()], ..Default::default() },
            body: Arc::default(),
            session: None,
            origin: "https://127.0.0.1:8443".into(),
            logo: false,
        };
        let with = |k: header::HeaderName, v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            check_origin(&cx, &h)
        };
        assert!(with(header::ORIGIN, "https://127.0.0.1:8443").is_ok());
        assert!(with(header::ORIGIN, "https://portal.example.com").is_ok());
        assert!(with(header::ORIGIN, "https://evil.example").is_err());
        assert!(with(header::REFERER, "https://evil.example/x").is_err());
        assert!(with(header::REFERER, "https://127.0.0.1:8443/apps").is_ok());
    }
}
