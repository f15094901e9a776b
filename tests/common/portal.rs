//! The developer portal's test harness: a control plane with its embedded data plane and
//! the portal, users made with the CLI, signed-in sessions, and calls through the data
//! plane as a browser makes them.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use hyper::Request;

use super::client::{Resp, body, http1, send};
use super::gateway::GatewayProc;
use super::{atrium, eventually, stdout};

/// A control plane with its embedded data plane (`web` only) and the portal, over `dir`.
pub struct Parent {
    /// The control plane.
    pub cp: GatewayProc,
}

impl Parent {
    /// Starts it and waits until its data plane serves the portal.
    pub async fn start(dir: &Path) -> Parent {
        Self::start_with(dir, &[]).await
    }

    /// [`Parent::start`] with extra flags.
    pub async fn start_with(dir: &Path, extra: &[&str]) -> Parent {
        let args: Vec<String> = [
            "control-plane",
            "--manifests",
            &dir.join("m").display().to_string(),
            "--spec-dir",
            &dir.join("specs").display().to_string(),
            "--grpc",
            "127.0.0.1:0",
            "--portal",
            "127.0.0.1:0",
            "--state-dir",
            &dir.join("state").display().to_string(),
            "--entrypoint",
            "web=127.0.0.1:0",
            "--entrypoint",
            "websecure=off",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let p = Parent { cp: GatewayProc::spawn(&args, 1, true) };
        eventually(Duration::from_secs(10), "the data plane serves the portal", || async {
            (p.call("GET", "portal.test", "/login", None, None).await.status == 200).then_some(())
        })
        .await;
        p
    }

    /// A request to `host` through the data plane; `session` adds its cookie, and for a
    /// write its CSRF token and the portal's origin.
    pub async fn call(
        &self,
        method: &str,
        host: &str,
        path: &str,
        session: Option<&Session>,
        json: Option<String>,
    ) -> Resp {
        let mut b =
            Request::builder().method(method).uri(format!("http://{}{path}", self.cp.web_addr())).header("host", host);
        if let Some(s) = session {
            b = b.header("cookie", &s.cookie);
            if method != "GET" {
                b = b.header("x-csrf-token", &s.csrf).header("origin", format!("http://{host}"));
            }
        }
        if json.is_some() {
            b = b.header("content-type", "application/json");
        }
        send(&http1(), b.body(body(json.unwrap_or_default())).unwrap()).await
    }

    /// A form post to the portal, as a browser sends it.
    pub async fn form(&self, path: &str, s: &Session, fields: &[(&str, &str)], origin: Option<&str>) -> Resp {
        let encoded: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        let mut b = Request::post(format!("http://{}{path}", self.cp.web_addr()))
            .header("host", "portal.test")
            .header("cookie", &s.cookie)
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        send(&http1(), b.body(body(encoded.join("&"))).unwrap()).await
    }

    /// Calls the API at the gateway with `key`.
    pub async fn api(&self, path: &str, key: &str) -> Resp {
        let req = Request::get(format!("http://{}{path}", self.cp.web_addr()))
            .header("host", "api.test")
            .header("authorization", format!("Bearer {key}"))
            .body(body(""))
            .unwrap();
        send(&http1(), req).await
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A signed-in session.
pub struct Session {
    /// `name=value` of the session cookie.
    pub cookie: String,
    /// The session's CSRF token.
    pub csrf: String,
}

/// Adds a user with the CLI; its one-time password.
pub fn add_user(store: &str, email: &str, groups: &[&str]) -> String {
    let mut args = vec!["portal", "--store", store, "user", "add", "--email", email];
    for g in groups {
        args.extend(["--group", g]);
    }
    let out = atrium(&args);
    assert!(out.status.success(), "{}", super::stderr(&out));
    let text = stdout(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("one-time password: "))
        .expect("a one-time password is printed")
        .trim()
        .to_string()
}

pub const PASSWORD: &str = "a-long-enough-password";

/// Signs `email` in through the REST API and replaces the one-time password.
pub async fn sign_in(p: &Parent, host: &str, email: &str, otp: &str) -> Session {
    let r =
        p.call("POST", host, "/api/login", None, Some(format!(r#"{{"email":"{email}","password":"{otp}"}}"#))).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let attrs = r.header("set-cookie").unwrap().to_string();
    for a in ["__Host-", "HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(attrs.contains(a), "{attrs}");
    }
    let csrf = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["csrf"].as_str().unwrap().to_string();
    let s = Session { cookie, csrf };
    // A one-time password opens nothing but the password change.
    assert_eq!(p.call("GET", host, "/api/catalog", Some(&s), None).await.status, 403);
    let r = p
        .call(
            "POST",
            host,
            "/api/account/password",
            Some(&s),
            Some(format!(r#"{{"current":"{otp}","new":"{PASSWORD}"}}"#)),
        )
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    s
}

pub fn json(r: &Resp) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// The APIs and plans a session's catalog shows.
pub async fn catalog(p: &Parent, host: &str, s: &Session) -> Vec<String> {
    let r = p.call("GET", host, "/api/catalog", Some(s), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut out: Vec<String> = json(&r)["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let plans: Vec<&str> =
                a["catalog_items"].as_array().unwrap().iter().map(|i| i["plan"]["title"].as_str().unwrap()).collect();
            format!("{} ({})", a["title"].as_str().unwrap(), plans.join(", "))
        })
        .collect();
    out.sort();
    out
}

/// The IngressRoute that routes `host` on `web` to APIPortal `portal` of `ns` (the
/// `apiportal` service with the `hub.traefik.io/api-portal` annotation), then `---`.
pub fn portal_route(ns: &str, portal: &str, host: &str) -> String {
    format!(
        "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: {portal}-portal
  namespace: {ns}
  annotations: {{hub.traefik.io/api-portal: {portal}}}
spec:
  entryPoints: [web]
  routes:
    - match: Host(`{host}`)
      services: [{{name: apiportal, namespace: traefik, port: 9903}}]
---
"
    )
}
