//! atrium's routing core: what a request is routed by and where it goes, decided without
//! I/O, without async and without a clock of its own, so every routing bug reproduces in a
//! unit test.
//!
//! The path of a request through it:
//! 1. [`path_security::sanitize`] cleans the request path (dot segments, escapes) or
//!    refuses it, and [`request::RequestView`] canonicalises the routing inputs (host,
//!    routing path, client IP) the way Traefik does.
//! 2. [`decide`] picks the router: the [`table::RouteTable`] (compiled from a snapshot)
//!    narrows the candidates by host and path prefix with its index, runs each candidate's
//!    [`rules::Rule`] in priority order, then checks the router's encoded-character policy.
//! 3. The router's [`middleware`]s say what happens to the request: path rewrites are pure
//!    functions over [`middleware::path::UrlPath`], header rules edit header maps, limiters
//!    count against a clock the caller passes in; a middleware that answers by itself
//!    returns an [`Answer`].
//! 4. [`wrr`] spreads requests over weighted servers; [`children`] parses where a child
//!    cluster listens.
//!
//! The data plane owns everything that touches a socket or a timer.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apim;
pub mod children;
pub mod fuzzing;
pub mod middleware;
pub mod path_security;
pub mod request;
pub mod rules;
pub mod table;
pub mod wrr;

use std::borrow::Cow;

use http::{HeaderMap, StatusCode};

use request::RequestView;
use table::RouteTable;

/// An answer the routing core gives by itself (a refusal, a CORS preflight, a 401): the
/// data plane renders it as a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    /// A plain-text body (a newline is added), or none.
    text: Option<Cow<'static, str>>,
}

impl Answer {
    /// An answer with a plain-text body.
    pub fn text(status: StatusCode, text: impl Into<Cow<'static, str>>) -> Answer {
        Answer { status, headers: HeaderMap::new(), text: Some(text.into()) }
    }

    /// An answer with no body.
    pub fn empty(status: StatusCode) -> Answer {
        Answer { status, headers: HeaderMap::new(), text: None }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Its headers, to add to.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// Status, headers and body text.
    pub fn into_parts(self) -> (StatusCode, HeaderMap, Option<Cow<'static, str>>) {
        (self.status, self.headers, self.text)
    }
}

/// One request as routing sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The entrypoint it came in on (its `encodedCharacters` applies unless the router's
    /// own middleware says otherwise); `None` for any (`route-check` without one).
    pub entry_point: Option<&'a str>,
    /// Set when it came through an uplink: only the routers attached to it are eligible.
    pub uplink: Option<&'a str>,
    /// The sanitized path, escapes intact (see [`path_security::sanitize`]).
    pub path: &'a str,
    /// The canonical routing inputs.
    pub view: RequestView<'a>,
}

/// What routing decided for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The router at this position of [`RouteTable::routers`] takes it.
    Route(usize),
    /// No router matches: 404.
    NotFound,
    /// A router matches, but refuses the request before any middleware runs.
    Refused {
        /// The router.
        router: usize,
        /// Its answer.
        answer: Answer,
    },
}

/// Routes one request: the one decision every lane of the data plane (and `route-check`)
/// takes the same way.
pub fn decide<X>(table: &RouteTable<X>, req: &Request<'_>) -> Decision {
    let hit = match req.uplink {
        Some(u) => table.route_uplink_index(u, &req.view),
        None => table.route_index(req.entry_point, &req.view),
    };
    let Some(i) = hit else { return Decision::NotFound };
    match table.refused_encoding(&table.routers()[i], req.entry_point.unwrap_or_default(), req.path) {
        None => Decision::Route(i),
        Some(c) => Decision::Refused {
            router: i,
            answer: Answer::text(
                StatusCode::BAD_REQUEST,
                format!("400 Bad Request: encoded character {c} is not allowed in the path"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atrium_proto::v1 as pb;

    fn table() -> RouteTable {
        let body = pb::SnapshotBody {
            routers: vec![
                pb::Router {
                    id: "a/web/0".into(),
                    rule: "PathPrefix(`/`)".into(),
                    priority: 1,
                    entry_points: vec!["web".into()],
                    service: "svc".into(),
                    ..Default::default()
                },
                pb::Router {
                    id: "a/crm/0".into(),
                    rule: "PathPrefix(`/crm`)".into(),
                    priority: 10,
                    uplinks: vec!["crm".into()],
                    service: "svc".into(),
                    ..Default::default()
                },
            ],
            services: vec![pb::Service { id: "svc".into(), kind: Some(pb::service::Kind::Portal(Default::default())) }],
            ..Default::default()
        };
        RouteTable::from_snapshot(&body, |_| ()).unwrap()
    }

    fn req<'a>(h: &'a HeaderMap, entry_point: &'a str, uplink: Option<&'a str>, path: &'a str) -> Request<'a> {
        Request {
            entry_point: Some(entry_point),
            uplink,
            path,
            view: RequestView::new("GET", "api.example.com", path, None, h, "127.0.0.1:1"),
        }
    }

    #[test]
    fn entry_points_and_uplinks_choose_their_routers() {
        let (t, h) = (table(), HeaderMap::new());
        let id = |d: Decision| match d {
            Decision::Route(i) => t.routers()[i].id.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(id(decide(&t, &req(&h, "web", None, "/crm/x"))), "a/crm/0", "the higher priority wins");
        assert_eq!(id(decide(&t, &req(&h, "web", Some("crm"), "/crm/x"))), "a/crm/0");
        assert_eq!(
            decide(&t, &req(&h, "web", Some("crm"), "/other")),
            Decision::NotFound,
            "an uplink sees its routers only"
        );
        assert_eq!(decide(&t, &req(&h, "web", Some("billing"), "/crm")), Decision::NotFound);
    }

    #[test]
    fn encoded_characters_are_refused_after_routing() {
        let (t, h) = (table(), HeaderMap::new());
        match decide(&t, &req(&h, "web", None, "/a%2Fb")) {
            Decision::Refused { answer, .. } => {
                assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
                assert!(answer.into_parts().2.unwrap().contains("%2F"));
            }
            other => panic!("{other:?}"),
        }
    }
}
