//! The REST API under `/api/`: everything the pages do, as JSON, described by its own
//! OpenAPI document (`/api/openapi.json`). The session cookie authenticates; every write
//! carries the session's CSRF token in `X-CSRF-Token` and, from a browser, the portal's
//! origin.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::web::{self, Ctx, Fail};
use crate::{Portal, auth, catalog, pages};

/// The header a REST write carries its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

/// A refusal, answered as JSON.
pub(crate) struct ApiFail(Fail);

impl<E: Into<Fail>> From<E> for ApiFail {
    fn from(e: E) -> ApiFail {
        ApiFail(e.into())
    }
}

impl IntoResponse for ApiFail {
    fn into_response(self) -> Response {
        self.0.json()
    }
}

type Answer = Result<Response, ApiFail>;

pub(crate) fn routes() -> Router<Arc<Portal>> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(document()) }))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/me", get(me))
        .route("/api/account/password", post(password))
        .route("/api/catalog", get(catalog_list))
        .route("/api/apis/{*id}", get(api))
        .route("/api/applications", get(applications).post(create_application))
        .route("/api/applications/{id}", delete(delete_application))
        .route("/api/applications/{id}/keys", post(create_key))
        .route("/api/applications/{id}/subscriptions", post(subscribe))
        .route("/api/keys/{id}", delete(revoke_key))
        .route("/api/console-key", post(console_key))
        .route("/api/subscriptions/{id}", delete(unsubscribe))
        .route("/api/{*rest}", axum::routing::any(|| async { ApiFail(Fail::NotFound) }))
}

async fn write_ctx(p: &Portal, headers: &HeaderMap) -> Result<Ctx, ApiFail> {
    let cx = web::ctx(p, headers).await?;
    let token = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    web::check_write(&cx, headers, token)?;
    Ok(cx)
}

#[derive(serde::Deserialize)]
struct Login {
    email: String,
    password: String,
}

async fn login(State(p): State<Arc<Portal>>, headers: HeaderMap, Json(l): Json<Login>) -> Answer {
    let cx = web::ctx(&p, &headers).await?;
    web::check_origin(&cx, &headers)?;
    pages::local_login_allowed(&cx)?;
    let user = pages::authenticate(&p, &headers, &l.email, &l.password).await.map_err(|e| match e {
        Fail::Invalid(_) => Fail::Login,
        e => e,
    })?;
    let (cookie, csrf) = pages::open_session(&p, &user, &cx.site.id).await?;
    Ok(([(header::SET_COOKIE, cookie)], Json(json!({"user": user, "csrf": csrf}))).into_response())
}

async fn logout(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Answer {
    write_ctx(&p, &headers).await?;
    if let Some(token) = web::cookie(&headers, web::SESSION_COOKIE).map(str::to_string) {
        p.store.run(move |s| s.end_session(&token)).await?;
    }
    Ok(([(header::SET_COOKIE, web::set_cookie(web::SESSION_COOKIE, "", 0))], StatusCode::NO_CONTENT).into_response())
}

async fn me(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Answer {
    let cx = web::ctx(&p, &headers).await?;
    let s = cx.user()?;
    Ok(Json(json!({"user": s.user, "csrf": s.csrf, "portal": {"id": cx.site.id, "title": cx.site.title}}))
        .into_response())
}

#[derive(serde::Deserialize)]
struct NewPassword {
    current: String,
    new: String,
}

async fn password(State(p): State<Arc<Portal>>, headers: HeaderMap, Json(n): Json<NewPassword>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    pages::change_password(&p, &cx, &headers, &n.current, &n.new).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn plan_json(p: Option<&atrium_proto::v1::Plan>) -> Value {
    match p {
        None => Value::Null,
        Some(p) => {
            let limit = |l: Option<&atrium_proto::v1::PlanLimit>| {
                l.map(|l| json!({"limit": l.limit, "period_ms": l.period_ms}))
            };
            json!({"id": p.id, "title": p.title, "description": p.description,
                   "rate_limit": limit(p.rate_limit.as_ref()), "quota": limit(p.quota.as_ref())})
        }
    }
}

async fn catalog_list(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Answer {
    let cx = web::ctx(&p, &headers).await?;
    let s = cx.member()?;
    let apis: Vec<Value> = catalog::apis(&cx.body, &cx.site.id, &s.user.groups)
        .iter()
        .map(|v| {
            json!({"id": v.api.id, "title": v.api.title, "description": v.api.description,
                   "catalog_items": v.items.iter().map(|i| json!({"id": i.id, "plan": plan_json(i.plan.as_ref())})).collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(
        json!({"portal": {"id": cx.site.id, "title": cx.site.title, "description": cx.site.description}, "apis": apis}),
    )
    .into_response())
}

async fn api(State(p): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<String>) -> Answer {
    let cx = web::ctx(&p, &headers).await?;
    let pages::ApiView { api: card, doc, notice, serving, servers, .. } = pages::api_view(&p, &cx, &id).await?;
    let operations: Vec<Value> = doc
        .iter()
        .flat_map(|d| d.tags.iter())
        .flat_map(|t| {
            t.operations
                .iter()
                .map(move |o| json!({"tag": t.name, "method": o.method, "path": o.path, "summary": o.summary}))
        })
        .collect();
    let plans: Vec<Value> =
        card.plans.iter().map(|p| json!({"title": p.title, "rate": p.rate, "quota": p.quota})).collect();
    Ok(Json(json!({"id": card.id, "title": card.title, "description": card.description, "plans": plans,
                   "servers": servers, "operations": operations, "spec_notice": notice, "serving": serving}))
    .into_response())
}

async fn applications(State(p): State<Arc<Portal>>, headers: HeaderMap) -> Answer {
    let cx = web::ctx(&p, &headers).await?;
    let (uid, portal) = (cx.member()?.user.id, cx.site.id.clone());
    let apps = p.store.run(move |s| s.applications(uid, &portal)).await?;
    // What is left of each subscription's plan, by subscription id.
    let mut remaining = serde_json::Map::new();
    for a in &apps {
        for sub in &a.subscriptions {
            let left = pages::remaining_of(&p, &cx.body, &a.app_id, &sub.catalog_item).await;
            remaining.insert(sub.id.to_string(), json!(left));
        }
    }
    Ok(Json(json!({"applications": apps, "remaining": remaining})).into_response())
}

/// Runs a write for the signed-in member; the gateway hears of it.
async fn store_write<T: serde::Serialize + Send + 'static>(
    p: &Arc<Portal>,
    cx: &Ctx,
    status: StatusCode,
    f: impl FnOnce(&crate::store::Store, &crate::store::User, &str) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Answer {
    let user = cx.member()?.user.clone();
    let portal = cx.site.id.clone();
    let out = p.store.run(move |s| f(s, &user, &portal)).await?;
    p.source.store_changed();
    Ok((status, Json(out)).into_response())
}

#[derive(serde::Deserialize)]
struct Name {
    name: String,
}

async fn create_application(State(p): State<Arc<Portal>>, headers: HeaderMap, Json(n): Json<Name>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    store_write(&p, &cx, StatusCode::CREATED, move |s, u, portal| s.create_application(u, portal, &n.name)).await
}

async fn delete_application(State(p): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<i64>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    store_write(&p, &cx, StatusCode::OK, move |s, u, portal| s.delete_application(u, portal, id).map(|_| json!({})))
        .await
}

#[derive(serde::Deserialize)]
struct NewKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_days: Option<i64>,
}

async fn create_key(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(k): Json<NewKey>,
) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    let expires = pages::expiry(&k.expires_days.map(|d| d.to_string()).unwrap_or_default())?;
    store_write(&p, &cx, StatusCode::CREATED, move |s, u, portal| {
        let key = auth::new_api_key();
        let info = s.add_key(u, portal, id, &k.name, &atrium_routing::apim::key_hash(&key), expires)?;
        Ok(json!({"key": key, "info": info}))
    })
    .await
}

async fn revoke_key(State(p): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<i64>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    store_write(&p, &cx, StatusCode::OK, move |s, u, portal| s.revoke_key(Some((u, portal)), id).map(|_| json!({})))
        .await
}

#[derive(serde::Deserialize)]
struct ConsoleKey {
    api: String,
}

/// A key for the try-it console, valid one hour, on the first of the user's applications
/// subscribed to an item that shows the API (404 for an API the user does not see; 409
/// without such an application).
async fn console_key(State(p): State<Arc<Portal>>, headers: HeaderMap, Json(k): Json<ConsoleKey>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    let s = cx.member()?;
    let v = catalog::api(&cx.body, &cx.site.id, &s.user.groups, &k.api).ok_or(Fail::NotFound)?;
    // A console key goes to the servers the page lists: only the operator's
    // (`override.servers`), never a spec's own, which its author chose.
    if v.api.spec_override_servers.is_empty() {
        return Err(Fail::Conflict(format!(
            "{} has no override.servers: its servers come from its spec, so the portal issues no key for the console",
            v.api.id
        ))
        .into());
    }
    let who = format!("user:{}", s.user.id);
    if let Some(wait) = p.console_keys.blocked(&who) {
        return Err(Fail::TooMany(wait.as_secs().max(1)).into());
    }
    p.console_keys.failed(&who);
    let items: Vec<String> = v.items.iter().filter(|i| i.plan.is_some()).map(|i| i.id.clone()).collect();
    store_write(&p, &cx, StatusCode::CREATED, move |st, u, portal| {
        let app = st
            .applications(u.id, portal)?
            .into_iter()
            .find(|a| !a.suspended && a.subscriptions.iter().any(|s| items.contains(&s.catalog_item)))
            .ok_or_else(|| crate::store::StoreError::Conflict("subscribe an application to this API first".into()))?;
        let key = auth::new_api_key();
        let info = st.console_key(u, portal, app.id, &atrium_routing::apim::key_hash(&key), 3600)?;
        Ok(json!({"key": key, "application": app.name, "info": info}))
    })
    .await
}

#[derive(serde::Deserialize)]
struct Subscribe {
    catalog_item: String,
}

async fn subscribe(
    State(p): State<Arc<Portal>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(b): Json<Subscribe>,
) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    let item = pages::subscribable(&cx, &b.catalog_item)?;
    store_write(&p, &cx, StatusCode::CREATED, move |s, u, portal| s.subscribe(u, portal, id, &item)).await
}

async fn unsubscribe(State(p): State<Arc<Portal>>, headers: HeaderMap, Path(id): Path<i64>) -> Answer {
    let cx = write_ctx(&p, &headers).await?;
    store_write(&p, &cx, StatusCode::OK, move |s, u, portal| s.unsubscribe(u, portal, id).map(|_| json!({}))).await
}

/// The REST API's OpenAPI document.
fn document() -> Value {
    let err = json!({"description": "refused", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"type": "object"}}}});
    let csrf = json!({"name": "X-CSRF-Token", "in": "header", "required": true, "schema": {"type": "string"}});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "format": "int64"}});
    let body = |props: Value, required: Value| json!({"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": props, "required": required}}}});
    let responses = |code: &str, d: &str| {
        let mut r = serde_json::Map::new();
        r.insert(code.to_string(), ok(d));
        for c in ["401", "403", "404", "409", "422", "429"] {
            r.insert(c.to_string(), err.clone());
        }
        Value::Object(r)
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "atrium portal API", "version": "1",
                 "description": "Everything the portal's pages do. Sign in with POST /api/login (a session cookie), then send the session's CSRF token in X-CSRF-Token on every write."},
        "paths": {
            "/api/login": {"post": {"summary": "Sign in", "requestBody": body(json!({"email": {"type": "string"}, "password": {"type": "string"}}), json!(["email", "password"])), "responses": responses("200", "signed in")}},
            "/api/logout": {"post": {"summary": "Sign out", "parameters": [csrf], "responses": responses("204", "signed out")}},
            "/api/me": {"get": {"summary": "The signed-in user and the CSRF token", "responses": responses("200", "the user")}},
            "/api/account/password": {"post": {"summary": "Change the password", "parameters": [csrf], "requestBody": body(json!({"current": {"type": "string"}, "new": {"type": "string", "minLength": 10}}), json!(["current", "new"])), "responses": responses("204", "changed")}},
            "/api/catalog": {"get": {"summary": "The APIs shared with the user's groups, with their plans", "responses": responses("200", "the catalog")}},
            "/api/apis/{id}": {"get": {"summary": "One API: operations, plans, servers and the clusters serving it", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": responses("200", "the API")}},
            "/api/applications": {
                "get": {"summary": "The user's applications with keys and subscriptions", "responses": responses("200", "applications")},
                "post": {"summary": "Create an application", "parameters": [csrf], "requestBody": body(json!({"name": {"type": "string", "minLength": 1, "maxLength": 100}}), json!(["name"])), "responses": responses("201", "created")}
            },
            "/api/applications/{id}": {"delete": {"summary": "Delete an application", "parameters": [csrf, id], "responses": responses("200", "deleted")}},
            "/api/applications/{id}/keys": {"post": {"summary": "Create an API key (shown once)", "parameters": [csrf, id], "requestBody": body(json!({"name": {"type": "string", "maxLength": 100}, "expires_days": {"type": "integer", "minimum": 1, "maximum": 3650}}), json!([])), "responses": responses("201", "the key, shown once")}},
            "/api/applications/{id}/subscriptions": {"post": {"summary": "Subscribe to a catalog item's plan", "parameters": [csrf, id], "requestBody": body(json!({"catalog_item": {"type": "string"}}), json!(["catalog_item"])), "responses": responses("201", "subscribed")}},
            "/api/keys/{id}": {"delete": {"summary": "Revoke a key", "parameters": [csrf, id], "responses": responses("200", "revoked")}},
            "/api/console-key": {"post": {"summary": "A key for the try-it console, valid one hour", "parameters": [csrf], "requestBody": body(json!({"api": {"type": "string"}}), json!(["api"])), "responses": responses("201", "the key, shown once")}},
            "/api/subscriptions/{id}": {"delete": {"summary": "End a subscription", "parameters": [csrf, id], "responses": responses("200", "ended")}}
        },
        "components": {"schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_reads_as_openapi_with_every_route() {
        let d = super::document();
        let paths = d["paths"].as_object().unwrap();
        assert!(paths.len() >= 12);
        // The portal renders its own document without trouble.
        let view = crate::openapi::read(&d, &[], |_, _| true);
        let ops: usize = view.tags.iter().map(|t| t.operations.len()).sum();
        assert_eq!(ops, 14);
    }
}
