//! `atrium route-check` end to end, on the seed's child manifests.

mod common;

use std::fs;
use std::path::Path;

use common::*;

const SEED_TESTS: &str = r#"tests:
  - name: crm goes to the crm router
    request:
      url: https://child-a.example.com/crm/health?x=1
      entryPoint: web
    expect:
      router: apps/crm-api
      service: crm-service
      path: /health
  - name: the route index is exact
    request:
      url: http://child-a/crm/customers/42
    expect:
      router: apps/crm-api/0
      path: /customers/42
  - name: plain string prefix, as Traefik
    request:
      url: http://child-a/crmx
    expect:
      router: apps/crm-api
      path: /x
  - name: other paths match nothing
    request:
      url: http://child-a/billing/health
    expect:
      router: none
  - name: a URL with no path matches no PathPrefix
    request:
      url: https://example.com
    expect:
      router: none
  - name: not on websecure
    request:
      url: https://child-a/crm/health
      entryPoint: websecure
    expect:
      router: none
"#;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

fn run(manifests: &Path, tests: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "route-check".to_string(),
        "--manifests".into(),
        manifests.display().to_string(),
        "--tests".into(),
        tests.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    atrium(args)
}

#[test]
fn seed_child_routes_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = write(tmp.path(), "t.yaml", SEED_TESTS);
    let c = example().join("cluster-a");
    let values = c.join("values.yaml").display().to_string();
    let out = run(&c.join("manifests"), &tests, &["--values", &values]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(text.contains("PASS crm goes to the crm router"), "{text}");
    assert_eq!(text.lines().last(), Some("6 passed, 0 failed"));
}

#[test]
fn failures_exit_1_and_json_keeps_test_order() {
    let tmp = tempfile::tempdir().unwrap();
    let tests = write(
        tmp.path(),
        "t.yaml",
        "tests:\n  - name: wrong path\n    request:\n      url: http://a/crm/health\n    expect:\n      router: apps/crm-api\n      path: /crm/health\n  - name: right\n    request:\n      url: http://a/crm/health\n    expect:\n      router: apps/crm-api\n      service: crm-service\n      path: /health\n  - name: wrong router\n    request:\n      url: http://a/nothing\n    expect:\n      router: apps/crm-api\n",
    );
    let m = example().join("cluster-a/manifests");
    let out = run(&m, &tests, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some(1), Some(2)));
    let r = v["results"].as_array().unwrap();
    let names: Vec<&str> = r.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["wrong path", "right", "wrong router"]);
    assert_eq!(r[0]["passed"], false);
    assert_eq!(r[0]["path"], "/health");
    assert!(r[0]["error"].as_str().unwrap().contains("expected path /crm/health"));
    assert_eq!(r[1]["router"], "apps/crm-api/0");
    assert_eq!(r[1]["service"], "crm-service");
    assert_eq!(r[1]["error"], serde_json::Value::Null);
    assert_eq!(r[2]["router"], "none");
}

#[test]
fn unreadable_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let m = example().join("cluster-a/manifests");
    let out = run(&m, &tmp.path().join("missing.yaml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    let bad = write(
        tmp.path(),
        "bad.yaml",
        "tests:\n  - name: x\n    request:\n      url: http://a/\n    expect:\n      routr: none\n",
    );
    let out = run(&m, &bad, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.yaml:6:7:"), "{}", stderr(&out));
    let tests = write(tmp.path(), "ok.yaml", SEED_TESTS);
    let out = run(&tmp.path().join("no-such-dir"), &tests, &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_router_whose_rule_does_not_parse_is_reported_and_left_out() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_dir(&example().join("cluster-a/manifests"), &m);
    fs::write(
        m.join("extra.yaml"),
        "apiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata:\n  name: broken\n  namespace: apps\nspec:\n  routes:\n    - match: PathPrefix(`/crm`) && Nope(`x`)\n      priority: 1000\n      services:\n        - name: crm-service\n          port: 80\n",
    )
    .unwrap();
    let tests = write(tmp.path(), "t.yaml", SEED_TESTS);
    let values = example().join("cluster-a/values.yaml").display().to_string();
    let out = run(&m, &tests, &["--values", &values]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("extra.yaml:8:14: error: IngressRoute apps/broken spec.routes[0].match"), "{err}");
}

#[test]
fn remote_addr_headers_and_host_override() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    fs::create_dir(&m).unwrap();
    fs::write(
        m.join("r.yaml"),
        "apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: r
  namespace: ns
spec:
  routes:
    - match: ClientIP(`10.0.0.0/8`) && Header(`X-Multi`, `b`)
      services: [{name: y@multicluster, kind: TraefikService}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata:
  name: h
  namespace: ns
spec:
  routes:
    - match: Host(`override.test`)
      services: [{name: x@multicluster, kind: TraefikService}]
",
    )
    .unwrap();
    let tests = write(
        tmp.path(),
        "t.yaml",
        "tests:
  - name: with an origin-form URL the host header gives the host
    request:
      url: /
      headers: {Host: override.test}
    expect: {router: ns/h, service: x@multicluster}
  - name: an absolute URL's authority wins over the host header, as on the gateway
    request:
      url: http://url.test/
      headers: {Host: override.test}
    expect: {router: none}
  - name: unparseable remote address does not match ClientIP
    request:
      url: http://a/
      remoteAddr: not-an-address
      headers: {X-Multi: [a, b]}
    expect: {router: none}
  - name: repeated header lines and a peer in range match
    request:
      url: http://a/
      remoteAddr: 10.1.2.3:5555
      headers: {X-Multi: [a, b]}
    expect: {router: ns/r/0, service: y@multicluster}
",
    );
    let out = run(&m, &tests, &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).ends_with("4 passed, 0 failed\n"), "{}", stdout(&out));
}
