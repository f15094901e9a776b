//! Server-side rendering of the portal's pages, end to end through the portal's router
//! (session lookup in SQLite, catalog, the OpenAPI document read, the template): the API
//! page of a 500-operation spec, and the catalog. The target is < 20 ms per page.

use std::sync::Arc;

use atrium_portal::{PORTAL_HEADER, Portal, Source, store::Store};
use atrium_proto::v1 as pb;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// A spec with `n` operations over 50 tags, each with parameters, a request body with a
/// nested schema, and two responses.
fn spec(n: usize) -> Value {
    let mut paths = serde_json::Map::new();
    for i in 0..n / 2 {
        paths.insert(
            format!("/resources{i}/{{id}}"),
            json!({
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "get": {"tags": [format!("tag{}", i % 50)], "summary": format!("Get resource {i}"), "description": "Returns **one** resource.",
                        "parameters": [{"name": "expand", "in": "query", "schema": {"type": "boolean"}}],
                        "responses": {"200": {"description": "The resource", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
                                      "404": {"description": "Not found"}}},
                "put": {"tags": [format!("tag{}", i % 50)], "summary": format!("Replace resource {i}"),
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
                        "responses": {"200": {"description": "Replaced", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Resource"}}}},
                                      "422": {"description": "Invalid"}}}
            }),
        );
    }
    json!({"openapi": "3.0.3", "info": {"title": "Big", "version": "1.0", "description": "A large API."}, "paths": paths,
           "components": {"schemas": {"Resource": {"type": "object", "required": ["name"], "properties": {
               "id": {"type": "string", "format": "uuid"}, "name": {"type": "string", "example": "widget"},
               "tags": {"type": "array", "items": {"type": "string"}},
               "owner": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}, "team": {"type": "string"}}},
               "parent": {"$ref": "#/components/schemas/Resource"}}}}}})
}

struct Fixed {
    body: Arc<pb::SnapshotBody>,
    doc: Arc<Value>,
}

impl Source for Fixed {
    fn body(&self) -> Arc<pb::SnapshotBody> {
        self.body.clone()
    }
    fn document(&self, _: &str) -> Option<Arc<Value>> {
        Some(self.doc.clone())
    }
    fn store_changed(&self) {}
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("portal.db")).unwrap();
    let user = store.add_user("dev@example.com", &["developers".into()], "x", false).unwrap();
    store.create_session("token", user.id, "apps/portal", "csrf", 3600).unwrap();
    let apis: Vec<pb::Api> = (0..20)
        .map(|i| pb::Api {
            id: format!("apps/api{i}"),
            title: format!("API {i}"),
            description: "An API".into(),
            ..Default::default()
        })
        .collect();
    let body = pb::SnapshotBody {
        portals: vec![pb::PortalSite { id: "apps/portal".into(), title: "Portal".into(), ..Default::default() }],
        catalog_items: vec![pb::CatalogItem {
            id: "apps/item".into(),
            apis: apis.iter().map(|a| a.id.clone()).collect(),
            groups: vec!["developers".into()],
            plan: Some(pb::Plan { id: "apps/standard".into(), title: "Standard".into(), ..Default::default() }),
            ..Default::default()
        }],
        apis,
        ..Default::default()
    };
    let portal = Portal::new(store, Arc::new(Fixed { body: Arc::new(body), doc: Arc::new(spec(500)) }));
    let app = atrium_portal::router(portal);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let get = |path: &'static str| {
        let app = app.clone();
        rt.block_on(async move {
            let req = http::Request::get(path)
                .header("host", "portal.test")
                .header(PORTAL_HEADER, "apps/portal")
                .header("cookie", "__Host-atrium-session=token")
                .body(axum::body::Body::empty())
                .unwrap();
            let r = tower_service::Service::call(&mut app.clone(), req).await.unwrap();
            assert_eq!(r.status(), 200);
            r.into_body().collect().await.unwrap().to_bytes().len()
        })
    };
    let size = get("/apis/apps/api0");
    eprintln!("API page of a 500-operation spec: {size} bytes");
    c.bench_function("api_page_500_operations", |b| b.iter(|| get("/apis/apps/api0")));
    c.bench_function("catalog_page_20_apis", |b| b.iter(|| get("/")));
}

criterion_group!(benches, bench);
criterion_main!(benches);
