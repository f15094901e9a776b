//! The HTML pages, rendered server-side (askama; every value escaped unless it went through
//! [`crate::markdown::render`]). Every form carries the session's CSRF token.

use std::sync::Arc;

use askama::Template;
use atrium_proto::v1 as pb;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::catalog::{self, Serving, Visible};
use crate::web::{self, Ctx, Fail, LOGIN_CSRF_COOKIE, SESSION_COOKIE, SESSION_TTL_S, redirect, set_cookie};
use crate::{Portal, auth, openapi};

/// A template rendered, or a plain error when rendering fails.
pub(crate) fn html<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(s) => Html(s).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "portal page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

/// What every page shows around its content.
pub(crate) struct Chrome {
    /// The APIPortal's title.
    pub title: String,
    /// Who is signed in.
    pub user: Option<String>,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: String,
    /// The APIPortal's logo is served.
    pub logo: bool,
    /// The portal's own documentation pages and links (signed-in members only).
    pub docs: Vec<DocLink>,
}

/// A link to a ContentItem: its page here, or its external link.
pub(crate) struct DocLink {
    pub href: String,
    pub title: String,
    pub external: bool,
}

/// Links to `pages`, by order then title.
fn doc_links<'a>(pages: impl Iterator<Item = &'a pb::ContentPage>) -> Vec<DocLink> {
    let mut v: Vec<&pb::ContentPage> = pages.collect();
    v.sort_by(|a, b| a.order.cmp(&b.order).then(a.title.cmp(&b.title)));
    v.into_iter()
        .map(|p| {
            let name = p.id.split_once('/').map_or(p.id.as_str(), |(_, n)| n);
            match p.link.is_empty() {
                true => DocLink { href: format!("/docs/{name}"), title: p.title.clone(), external: false },
                false => DocLink { href: p.link.clone(), title: p.title.clone(), external: true },
            }
        })
        .collect()
}

impl Chrome {
    fn of(cx: &Ctx) -> Chrome {
        Chrome {
            title: cx.site.title.clone(),
            user: cx.session.as_ref().map(|s| s.user.email.clone()),
            csrf: cx.session.as_ref().map(|s| s.csrf.clone()).unwrap_or_default(),
            logo: cx.logo,
            docs: match cx.member() {
                Ok(_) => doc_links(
                    cx.body.content_pages.iter().filter(|p| p.parent_kind == "APIPortal" && p.parent == cx.site.id),
                ),
                Err(_) => Vec::new(),
            },
        }
    }
}

/// A plan as pages show it.
pub(crate) struct PlanView {
    pub title: String,
    pub description: String,
    pub rate: String,
    pub quota: String,
}

/// A limit in words: `100 requests per minute`.
pub(crate) fn limit_text(l: Option<&pb::PlanLimit>) -> String {
    let Some(l) = l else { return "unlimited".into() };
    let ms = l.period_ms.max(1);
    let per = match ms {
        1000 => "second".to_string(),
        60_000 => "minute".to_string(),
        3_600_000 => "hour".to_string(),
        86_400_000 => "day".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{} hours", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} minutes", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{} seconds", ms / 1000),
        ms => format!("{ms} ms"),
    };
    format!("{} requests per {per}", l.limit)
}

pub(crate) fn plan_view(p: Option<&pb::Plan>) -> PlanView {
    match p {
        Some(p) => PlanView {
            title: if p.title.is_empty() { p.id.clone() } else { p.title.clone() },
            description: p.description.clone(),
            rate: limit_text(p.rate_limit.as_ref()),
            quota: limit_text(p.quota.as_ref()),
        },
        None => {
            PlanView { title: "No plan".into(), description: String::new(), rate: String::new(), quota: String::new() }
        }
    }
}

/// An API on the catalog.
pub(crate) struct ApiCard {
    pub href: String,
    pub id: String,
    pub title: String,
    pub description: String,
    pub plans: Vec<PlanView>,
}

fn card(v: &Visible<'_>) -> ApiCard {
    ApiCard {
        href: format!("/apis/{}", v.api.id),
        id: v.api.id.clone(),
        title: if v.api.title.is_empty() { v.api.id.clone() } else { v.api.title.clone() },
        description: v.api.description.clone(),
        plans: v.items.iter().map(|i| plan_view(i.plan.as_ref())).collect(),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub title: String,
    pub status: u16,
    pub message: String,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
    description: String,
    /// Sign-in goes through this OpenID Connect provider (no password form).
    sso: Option<String>,
    login_csrf: String,
    email: String,
    error: String,
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    chrome: Chrome,
    forced: bool,
    error: String,
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct CatalogPage {
    chrome: Chrome,
    description: String,
    apis: Vec<ApiCard>,
}

#[derive(Template)]
#[template(path = "api.html")]
struct ApiPage {
    chrome: Chrome,
    api: ApiCard,
    doc: Option<openapi::Doc>,
    notice: String,
    serving: Vec<Serving>,
    servers: Vec<String>,
    key_in: (&'static str, String, String),
    guides: Vec<DocLink>,
}

#[derive(Template)]
#[template(path = "doc.html")]
struct DocPage {
    chrome: Chrome,
    title: String,
    html: String,
}

/// ContentItem `name` of the portal's namespace, when the user may read it: a page of the
/// portal, or one of an API (or bundle) the user sees.
pub(crate) async fn doc_page(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let s = cx.member()?;
    let id = format!("{}/{name}", catalog::namespace(&cx.site.id));
    let page = cx.body.content_pages.iter().find(|c| c.id == id && c.link.is_empty()).ok_or(Fail::NotFound)?;
    let readable = match page.parent_kind.as_str() {
        "APIPortal" => page.parent == cx.site.id,
        _ => page.apis.iter().any(|a| catalog::api(&cx.body, &cx.site.id, &s.user.groups, a).is_some()),
    };
    if !readable {
        return Err(Fail::NotFound);
    }
    let body = crate::markdown::render(&page.markdown);
    Ok(html(&DocPage { chrome: Chrome::of(&cx), title: page.title.clone(), html: body }))
}

/// A catalog item one can subscribe to.
struct ItemView {
    id: String,
    label: String,
}

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    chrome: Chrome,
    apps: Vec<AppView>,
    items: Vec<ItemView>,
    new_key: Option<NewKey>,
    error: String,
}

struct NewKey {
    app: String,
    key: String,
}

struct AppView {
    app: crate::store::Application,
    subscriptions: Vec<(i64, String, PlanView, Vec<Left>)>,
}

/// What is left of a subscription's plan for one of its APIs.
struct Left {
    api: String,
    rate: String,
    quota: String,
}

/// What is left of an application's plan for one API.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Remaining {
    pub api: String,
    pub title: String,
    /// Requests left in the rate limit (none: no rate limit).
    pub rate: Option<u64>,
    /// Requests left in the quota (none: no quota).
    pub quota: Option<u64>,
}

/// What is left, for each API of catalog item `item`, of the plan application `app_id`
/// calls it on (empty when the control plane does not count: see [`crate::Source::remaining`]).
pub(crate) async fn remaining_of(p: &Portal, body: &pb::SnapshotBody, app_id: &str, item: &str) -> Vec<Remaining> {
    let Some(item) = body.catalog_items.iter().find(|i| i.id == item) else { return Vec::new() };
    let mut out = Vec::new();
    // Each is a read of the counters (a Redis call when it holds them): bounded per item.
    for api in item.apis.iter().take(20) {
        if let Some((rate, quota)) = p.source.remaining(app_id, api).await {
            let title = body.apis.iter().find(|a| &a.id == api).map_or(api.clone(), |a| a.title.clone());
            out.push(Remaining { api: api.clone(), title, rate, quota });
        }
    }
    out
}

/// `n of limit left`, or empty without the limit.
fn left(n: Option<u64>, l: Option<&pb::PlanLimit>) -> String {
    match (n, l) {
        (Some(n), Some(l)) => format!("{n} of {} left", l.limit),
        _ => String::new(),
    }
}

async fn apps_page(
    p: &Portal,
    cx: &Ctx,
    apps: Vec<crate::store::Application>,
    new_key: Option<NewKey>,
    error: String,
) -> Result<Response, Fail> {
    let s = cx.member()?;
    let items: Vec<ItemView> = catalog::items(&cx.body, &cx.site.id, &s.user.groups)
        .into_iter()
        .filter(|i| i.plan.is_some())
        .map(|i| {
            let titles: Vec<String> = i
                .apis
                .iter()
                .filter_map(|a| cx.body.apis.iter().find(|x| &x.id == a))
                .map(|a| if a.title.is_empty() { a.id.clone() } else { a.title.clone() })
                .collect();
            ItemView {
                id: i.id.clone(),
                label: format!("{} — {}", plan_view(i.plan.as_ref()).title, titles.join(", ")),
            }
        })
        .collect();
    let mut views = Vec::with_capacity(apps.len());
    for app in apps {
        let mut subscriptions = Vec::new();
        for sub in &app.subscriptions {
            let item = cx.body.catalog_items.iter().find(|i| i.id == sub.catalog_item);
            let plan = item.and_then(|i| i.plan.as_ref());
            let lefts = remaining_of(p, &cx.body, &app.app_id, &sub.catalog_item)
                .await
                .into_iter()
                .map(|r| Left {
                    api: r.title,
                    rate: left(r.rate, plan.and_then(|p| p.rate_limit.as_ref())),
                    quota: left(r.quota, plan.and_then(|p| p.quota.as_ref())),
                })
                .collect();
            subscriptions.push((sub.id, sub.catalog_item.clone(), plan_view(plan), lefts));
        }
        views.push(AppView { app, subscriptions });
    }
    let apps = views;
    let status = if error.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    Ok((status, html(&AppsPage { chrome: Chrome::of(cx), apps, items, new_key, error })).into_response())
}

// ---- handlers ----

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    email: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct NameForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_days: String,
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct SubscribeForm {
    #[serde(default)]
    catalog_item: String,
    #[serde(default)]
    csrf: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn login_form(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    if cx.session.is_some() {
        return Ok(redirect("/"));
    }
    Ok(login_page(&cx, &headers, String::new(), String::new(), StatusCode::OK))
}

fn login_page(cx: &Ctx, headers: &HeaderMap, email: String, error: String, status: StatusCode) -> Response {
    let token = web::cookie(headers, LOGIN_CSRF_COOKIE)
        .filter(|t| t.len() >= 32)
        .map(str::to_string)
        .unwrap_or_else(|| auth::random_token(24));
    let page = LoginPage {
        chrome: Chrome::of(cx),
        description: cx.site.description.clone(),
        sso: cx.site.oidc.as_ref().map(|o| o.issuer_url.clone()),
        login_csrf: token.clone(),
        email,
        error,
    };
    let mut r = (status, html(&page)).into_response();
    if let Ok(v) = set_cookie(LOGIN_CSRF_COOKIE, &token, 3600).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Checks email and password; the user on success. Attempts are limited per email and per
/// client (each counted before the password is checked, so a burst cannot slip past the
/// limit), and at most a few password checks run at once (argon2 is slow on purpose).
pub(crate) async fn authenticate(
    p: &Arc<Portal>,
    headers: &HeaderMap,
    email: &str,
    password: &str,
) -> Result<crate::store::User, Fail> {
    let email = email.trim();
    let by_email = format!("email:{}", crate::markdown::truncate(&email.to_lowercase(), 254));
    let client = web::client_of(headers);
    let by_client = (!client.is_empty()).then(|| format!("client:{client}"));
    let blocked = p.by_email.blocked(&by_email).or_else(|| by_client.as_deref().and_then(|c| p.by_client.blocked(c)));
    if let Some(wait) = blocked {
        return Err(Fail::TooMany(wait.as_secs().max(1)));
    }
    p.by_email.failed(&by_email);
    if let Some(c) = &by_client {
        p.by_client.failed(c);
    }
    let refused = || Fail::Invalid("wrong email or password".into());
    if email.len() > 254 || password.len() > 1024 {
        return Err(refused());
    }
    let _slot = p.password_checks.acquire().await.map_err(|e| Fail::Internal(e.to_string()))?;
    let (e, pw) = (email.to_string(), password.to_string());
    let found = p
        .store
        .run(move |s| {
            let u = s.user_by_email(&e)?;
            let ok = match &u {
                Some((_, hash)) if !hash.is_empty() => auth::verify_password(&pw, hash),
                _ => {
                    // As slow as a wrong password, so that timing does not tell who exists.
                    let _ = auth::verify_password(&pw, auth::dummy_hash());
                    false
                }
            };
            let actor = u.as_ref().map(|(u, _)| u.email.clone()).unwrap_or_else(|| "unknown".into());
            s.audit(&actor, if ok { "login" } else { "login.failed" }, "")?;
            Ok(u.filter(|_| ok).map(|(u, _)| u))
        })
        .await?;
    match found {
        Some(u) => {
            p.by_email.succeeded(&by_email);
            Ok(u)
        }
        None => Err(refused()),
    }
}

/// A new session for `user` at `portal`: its cookie and CSRF token.
pub(crate) async fn open_session(
    p: &Arc<Portal>,
    user: &crate::store::User,
    portal: &str,
) -> Result<(String, String), Fail> {
    let (token, csrf) = (auth::random_token(32), auth::random_token(24));
    let (t, c, id, portal) = (token.clone(), csrf.clone(), user.id, portal.to_string());
    p.store.run(move |s| s.create_session(&t, id, &portal, &c, SESSION_TTL_S)).await?;
    Ok((set_cookie(SESSION_COOKIE, &token, SESSION_TTL_S), csrf))
}

pub(crate) async fn login(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_origin(&cx, &headers)?;
    local_login_allowed(&cx)?;
    let expected = web::cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if expected.is_empty() || !auth::same(expected, &f.csrf) {
        return Ok(login_page(
            &cx,
            &headers,
            f.email,
            "The form expired: please sign in again.".into(),
            StatusCode::FORBIDDEN,
        ));
    }
    match authenticate(&p, &headers, &f.email, &f.password).await {
        Ok(user) => {
            let (cookie, _) = open_session(&p, &user, &cx.site.id).await?;
            let mut r = redirect(if user.must_change { "/account/password" } else { "/" });
            if let Ok(v) = cookie.parse() {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            if let Ok(v) = set_cookie(LOGIN_CSRF_COOKIE, "", 0).parse() {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        Err(Fail::Invalid(m)) => Ok(login_page(&cx, &headers, f.email, m, StatusCode::UNAUTHORIZED)),
        Err(Fail::TooMany(s)) => Ok(login_page(
            &cx,
            &headers,
            f.email,
            format!("Too many attempts: try again in {s} s."),
            StatusCode::TOO_MANY_REQUESTS,
        )),
        Err(e) => Err(e),
    }
}

/// Local passwords do not sign in at a portal whose APIPortalAuth is OpenID Connect.
pub(crate) fn local_login_allowed(cx: &Ctx) -> Result<(), Fail> {
    match &cx.site.oidc {
        Some(o) => Err(Fail::Forbidden(format!("this portal signs in through {} (GET /login/oidc)", o.issuer_url))),
        None => Ok(()),
    }
}

pub(crate) async fn oidc_start(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let Some(o) = &cx.site.oidc else { return Err(Fail::NotFound) };
    // Each start writes a pending sign-in: bounded per client and in all.
    let client = format!("oidc:{}", web::client_of(&headers));
    if let Some(wait) = p.oidc_starts.blocked(&client) {
        return Err(Fail::TooMany(wait.as_secs().max(1)));
    }
    p.oidc_starts.failed(&client);
    if p.store.run(|s| s.pending_logins()).await? >= crate::oidc::MAX_PENDING {
        return Err(Fail::Unavailable("too many sign-ins are on their way; try again in a few minutes".into()));
    }
    let (url, state) = p.oidc.start(&p.store, &cx.site, o, &cx.origin).await?;
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response();
    if let Ok(v) = set_cookie(crate::oidc::STATE_COOKIE, &state, 600).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

#[derive(serde::Deserialize)]
pub(crate) struct Callback {
    #[serde(default)]
    code: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    error: String,
}

pub(crate) async fn oidc_callback(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Callback>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let Some(o) = &cx.site.oidc else { return Err(Fail::NotFound) };
    if !q.error.is_empty() {
        return Err(Fail::Forbidden(format!(
            "the sign-in provider said: {}",
            crate::markdown::truncate(&q.error, 100)
        )));
    }
    let browser = web::cookie(&headers, crate::oidc::STATE_COOKIE);
    let user = p.oidc.finish(&p.store, &cx.site, o, &q.code, &q.state, browser).await?;
    let (cookie, _) = open_session(&p, &user, &cx.site.id).await?;
    let mut r = redirect("/");
    for c in [cookie, set_cookie(crate::oidc::STATE_COOKIE, "", 0)] {
        if let Ok(v) = c.parse() {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

pub(crate) async fn logout(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    if let Some(token) = web::cookie(&headers, SESSION_COOKIE).map(str::to_string) {
        p.store.run(move |s| s.end_session(&token)).await?;
    }
    let mut r = redirect("/login");
    if let Ok(v) = set_cookie(SESSION_COOKIE, "", 0).parse() {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

pub(crate) async fn password_form(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let forced = cx.user()?.user.must_change;
    Ok(html(&PasswordPage { chrome: Chrome::of(&cx), forced, error: String::new() }))
}

/// Changes the signed-in user's password after checking the current one.
pub(crate) async fn change_password(
    p: &Arc<Portal>,
    cx: &Ctx,
    headers: &HeaderMap,
    current: &str,
    new: &str,
) -> Result<(), Fail> {
    let user = cx.user()?.user.clone();
    if let Some(why) = auth::password_problem(new) {
        return Err(Fail::Invalid(why.into()));
    }
    if current == new {
        return Err(Fail::Invalid("the new password must differ from the current one".into()));
    }
    authenticate(p, headers, &user.email, current).await.map_err(|e| match e {
        Fail::Invalid(_) => Fail::Invalid("the current password is wrong".into()),
        e => e,
    })?;
    let new = new.to_string();
    let keep = web::cookie(headers, SESSION_COOKIE).map(str::to_string);
    p.store.run(move |s| s.set_password(user.id, &auth::hash_password(&new), false, keep.as_deref())).await?;
    Ok(())
}

pub(crate) async fn password(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Form(f): Form<PasswordForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    let forced = cx.user()?.user.must_change;
    let result = if f.new != f.confirm {
        Err(Fail::Invalid("the two new passwords differ".into()))
    } else {
        change_password(&p, &cx, &headers, &f.current, &f.new).await
    };
    match result {
        Ok(()) => Ok(redirect("/")),
        Err(Fail::Invalid(m)) => {
            Ok((StatusCode::UNPROCESSABLE_ENTITY, html(&PasswordPage { chrome: Chrome::of(&cx), forced, error: m }))
                .into_response())
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn catalog(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let s = cx.member()?;
    let apis = catalog::apis(&cx.body, &cx.site.id, &s.user.groups).iter().map(card).collect();
    Ok(html(&CatalogPage { chrome: Chrome::of(&cx), description: cx.site.description.clone(), apis }))
}

/// What the API page shows.
pub(crate) struct ApiView {
    pub api: ApiCard,
    pub doc: Option<openapi::Doc>,
    pub notice: String,
    pub serving: Vec<Serving>,
    pub servers: Vec<String>,
    /// Where the try-it console puts the key: `query` or `header`, its name, and the
    /// header's scheme (`Bearer`).
    pub key_in: (&'static str, String, String),
}

/// Where a caller of `api` puts the key. The default key source takes `Authorization:
/// Bearer` or `?api_key=`; the console uses the query parameter then, so that a GET from
/// the browser needs no CORS preflight for `Authorization` (which `allowHeadersList: ["*"]`
/// does not cover).
fn key_in(api: &pb::Api) -> (&'static str, String, String) {
    match &api.auth {
        Some(pb::api::Auth::ApiKey(k)) if !k.query.is_empty() => ("query", k.query.clone(), String::new()),
        Some(pb::api::Auth::ApiKey(k)) if !k.header.is_empty() => {
            ("header", k.header.clone(), k.header_auth_scheme.clone())
        }
        Some(pb::api::Auth::ApiKey(_)) => ("query", "api_key".into(), String::new()),
        _ => ("header", "Authorization".into(), "Bearer".into()),
    }
}

/// The API page's content for API `id` (404 when the user does not see it).
/// Reading a spec is bounded but not free: it runs on a blocking thread.
pub(crate) async fn api_view(p: &Portal, cx: &Ctx, id: &str) -> Result<ApiView, Fail> {
    let s = cx.member()?;
    let v = catalog::api(&cx.body, &cx.site.id, &s.user.groups, id).ok_or(Fail::NotFound)?;
    let doc = match p.source.document(id) {
        Some(d) => {
            let (ops, servers) = (v.operations(), v.api.spec_override_servers.clone());
            let read = tokio::task::spawn_blocking(move || openapi::read(&d, &servers, |m, path| ops.shows(m, path)));
            Some(read.await.map_err(|e| Fail::Internal(format!("reading the spec of {id}: {e}")))?)
        }
        None => None,
    };
    let notice = match (&doc, v.api.spec_status.as_str()) {
        (None, "") => "This API has no OpenAPI description.".to_string(),
        (None, "pending") => "The OpenAPI description is being fetched.".to_string(),
        (None, st) => format!("The OpenAPI description could not be fetched ({st})."),
        (Some(_), st) if st.starts_with("error") => format!("Showing the last good OpenAPI description ({st})."),
        _ => String::new(),
    };
    let servers = match &doc {
        Some(d) => d.servers.clone(),
        None => v.api.spec_override_servers.clone(),
    };
    Ok(ApiView { api: card(&v), doc, notice, serving: catalog::serving(&cx.body, id), servers, key_in: key_in(v.api) })
}

pub(crate) async fn api_page(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let ApiView { api, doc, notice, serving, servers, key_in } = api_view(&p, &cx, &id).await?;
    let guides =
        doc_links(cx.body.content_pages.iter().filter(|c| c.parent_kind != "APIPortal" && c.apis.contains(&id)));
    Ok(html(&ApiPage { chrome: Chrome::of(&cx), api, doc, notice, serving, servers, key_in, guides }))
}

async fn my_apps(p: &Arc<Portal>, cx: &Ctx) -> Result<Vec<crate::store::Application>, Fail> {
    let (uid, portal) = (cx.member()?.user.id, cx.site.id.clone());
    Ok(p.store.run(move |s| s.applications(uid, &portal)).await?)
}

pub(crate) async fn apps(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    let list = my_apps(&p, &cx).await?;
    apps_page(&p, &cx, list, None, String::new()).await
}

/// Runs a write of the signed-in user; a refusal of their input shows on the page.
async fn app_write(
    p: &Arc<Portal>,
    cx: &Ctx,
    f: impl FnOnce(&crate::store::Store, &crate::store::User, &str) -> Result<Option<NewKey>, crate::store::StoreError>
    + Send
    + 'static,
) -> Result<Response, Fail> {
    let user = cx.member()?.user.clone();
    let portal = cx.site.id.clone();
    let result = p.store.run(move |s| f(s, &user, &portal)).await;
    let (key, error) = match result {
        // Post/redirect/get, except for a new key: it is shown on this answer only.
        Ok(None) => {
            p.source.store_changed();
            return Ok(redirect("/apps"));
        }
        Ok(k) => {
            p.source.store_changed();
            (k, String::new())
        }
        Err(e) => match Fail::from(e) {
            Fail::Conflict(m) | Fail::Invalid(m) => (None, m),
            other => return Err(other),
        },
    };
    let list = my_apps(p, cx).await?;
    apps_page(p, cx, list, key, error).await
}

pub(crate) async fn create_app(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Form(f): Form<NameForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    app_write(&p, &cx, move |s, u, portal| s.create_application(u, portal, &f.name).map(|_| None)).await
}

pub(crate) async fn delete_app(
    p: State<Arc<Portal>>,
    headers: HeaderMap,
    id: Path<i64>,
    f: Form<CsrfForm>,
) -> Result<Response, Fail> {
    by_id(p, headers, id, f, |s, u, portal, id| s.delete_application(u, portal, id)).await
}

/// A form post acting on the object `id` of the signed-in user (its CSRF token checked).
async fn by_id(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
    op: fn(&crate::store::Store, &crate::store::User, &str, i64) -> Result<(), crate::store::StoreError>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    app_write(&p, &cx, move |s, u, portal| op(s, u, portal, id).map(|_| None)).await
}

/// Days until a new key expires, from a form field (empty: never).
pub(crate) fn expiry(days: &str) -> Result<Option<i64>, Fail> {
    match days.trim() {
        "" | "0" => Ok(None),
        d => match d.parse::<i64>() {
            Ok(n) if (1..=3650).contains(&n) => Ok(Some(crate::store::now() + n * 86_400)),
            _ => Err(Fail::Invalid("expiry: a number of days from 1 to 3650, or empty for never".into())),
        },
    }
}

pub(crate) async fn create_key(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<KeyForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    let expires = expiry(&f.expires_days)?;
    app_write(&p, &cx, move |s, u, portal| {
        let key = auth::new_api_key();
        let hash = atrium_routing::apim::key_hash(&key);
        let app = s.application(u.id, portal, id)?;
        s.add_key(u, portal, id, &f.name, &hash, expires)?;
        Ok(Some(NewKey { app: app.name, key }))
    })
    .await
}

pub(crate) async fn revoke_key(
    p: State<Arc<Portal>>,
    headers: HeaderMap,
    id: Path<i64>,
    f: Form<CsrfForm>,
) -> Result<Response, Fail> {
    by_id(p, headers, id, f, |s, u, portal, id| s.revoke_key(Some((u, portal)), id)).await
}

/// The catalog item `item` when the user sees it in this portal and it has a plan.
pub(crate) fn subscribable(cx: &Ctx, item: &str) -> Result<String, Fail> {
    let s = cx.member()?;
    let found = catalog::items(&cx.body, &cx.site.id, &s.user.groups)
        .into_iter()
        .find(|i| i.id == item)
        .ok_or(Fail::NotFound)?;
    if found.plan.is_none() {
        return Err(Fail::Invalid(format!("catalog item {item} has no plan to subscribe to")));
    }
    Ok(found.id.clone())
}

pub(crate) async fn subscribe(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<SubscribeForm>,
) -> Result<Response, Fail> {
    let cx = web::ctx(&p, &headers).await?;
    web::check_write(&cx, &headers, Some(&f.csrf))?;
    let item = match subscribable(&cx, &f.catalog_item) {
        Ok(i) => i,
        Err(Fail::NotFound) => {
            return apps_page(&p, &cx, my_apps(&p, &cx).await?, None, "no such catalog item".into()).await;
        }
        Err(e) => return Err(e),
    };
    app_write(&p, &cx, move |s, u, portal| s.subscribe(u, portal, id, &item).map(|_| None)).await
}

pub(crate) async fn unsubscribe(
    p: State<Arc<Portal>>,
    headers: HeaderMap,
    id: Path<i64>,
    f: Form<CsrfForm>,
) -> Result<Response, Fail> {
    by_id(p, headers, id, f, |s, u, portal, id| s.unsubscribe(u, portal, id)).await
}

impl crate::store::KeyInfo {
    /// When it was made, as a date.
    pub(crate) fn created_date(&self) -> String {
        date(&self.created)
    }

    /// When it expires, as a date (empty: never).
    pub(crate) fn expires_date(&self) -> String {
        self.expires.as_ref().map(date).unwrap_or_default()
    }
}

/// Seconds since the epoch as a UTC date.
pub(crate) fn date(t: &i64) -> String {
    let days = t.div_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_words() {
        let l = |limit, period_ms| pb::PlanLimit { limit, period_ms, bucket: 0 };
        assert_eq!(limit_text(Some(&l(100, 60_000))), "100 requests per minute");
        assert_eq!(limit_text(Some(&l(10_000, 3_600_000))), "10000 requests per hour");
        assert_eq!(limit_text(Some(&l(5, 7_200_000))), "5 requests per 2 hours");
        assert_eq!(limit_text(None), "unlimited");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(date(&0), "1970-01-01");
        assert_eq!(date(&1_796_169_600), "2026-12-02");
        assert_eq!(date(&951_782_400), "2000-02-29");
    }
}
