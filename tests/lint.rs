//! `atrium lint` end to end: the seed's topology, and each of the guide's "Important
//! Considerations" mistakes added to a copy of it.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn edit(file: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {}", file.display());
    fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// Lints a topology copy and returns (exit code, stdout lines).
fn lint(dir: &Path) -> (i32, Vec<String>) {
    let out = atrium([Path::new("lint"), dir]);
    (out.status.code().unwrap_or(-1), stdout(&out).lines().map(str::to_string).collect())
}

fn find<'a>(lines: &'a [String], code: &str) -> &'a str {
    lines.iter().find(|l| l.ends_with(&format!("[{code}]"))).unwrap_or_else(|| panic!("no [{code}] in {lines:#?}"))
}

#[test]
fn seed_topology_has_no_errors_and_warns_about_insecure_skip_verify() {
    let (code, lines) = lint(&example());
    assert_eq!(code, 0, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(": error: ")), "{lines:#?}");
    let insecure: Vec<&String> = lines.iter().filter(|l| l.ends_with("[insecure-skip-verify]")).collect();
    assert_eq!(insecure.len(), 2, "{lines:#?}");
    let values = example().join("parent/values.yaml");
    let line = line_of(&values, "insecureSkipVerify: true # Use proper mTLS");
    assert!(insecure[0].starts_with(&format!("{}:{line}:", values.display())), "{}", insecure[0]);
    assert!(insecure[0].contains(": warning: "));
}

#[test]
fn openapi_spec_path_on_the_parent_is_an_error() {
    let dir = example_copy();
    let apis = dir.path().join("parent/manifests/apis.yaml");
    edit(&apis, "url: https://example.com/specs/crm-openapi.yaml", "path: /openapi.yaml");
    let (code, lines) = lint(dir.path());
    assert_eq!(code, 1);
    let l = find(&lines, "openapi-spec-path");
    let line = line_of(&apis, "path: /openapi.yaml");
    assert!(
        l.starts_with(&format!("{}:{line}:11: error: API apps/crm-api spec.openApiSpec.path:", apis.display())),
        "{l}"
    );
}

#[test]
fn host_matcher_on_an_uplink_route_is_reported() {
    let dir = example_copy();
    let route = dir.path().join("cluster-a/manifests/crm-api.yaml");
    edit(&route, "match: PathPrefix(`/crm`)", "match: Host(`api.example.com`) && PathPrefix(`/crm`)");
    let (_, lines) = lint(dir.path());
    let l = find(&lines, "uplink-route-host");
    let line = line_of(&route, "Host(`api.example.com`)");
    assert!(
        l.starts_with(&format!(
            "{}:{line}:14: warning: IngressRoute apps/crm-api spec.routes[0].match:",
            route.display()
        )),
        "{l}"
    );
}

#[test]
fn apim_resources_outside_the_portal_namespace_are_reported() {
    let dir = example_copy();
    let extra = dir.path().join("parent/manifests/stray.yaml");
    fs::write(
        &extra,
        "apiVersion: hub.traefik.io/v1alpha1\nkind: APIPlan\nmetadata:\n  name: stray-plan\n  namespace: other\nspec:\n  title: Stray\n",
    )
    .unwrap();
    let (_, lines) = lint(dir.path());
    let l = find(&lines, "apim-namespace");
    assert!(l.starts_with(&format!("{}:5:", extra.display())), "{l}");
    assert!(l.contains("APIPlan other/stray-plan"), "{l}");
}

#[test]
fn multicluster_service_that_no_child_exposes_is_an_error() {
    let dir = example_copy();
    let routes = dir.path().join("parent/manifests/ingressroutes.yaml");
    edit(&routes, "name: billing@multicluster", "name: invoices@multicluster");
    let (code, lines) = lint(dir.path());
    assert_eq!(code, 1);
    let l = find(&lines, "multicluster-unknown-uplink");
    let line = line_of(&routes, "invoices@multicluster");
    assert!(l.starts_with(&format!("{}:{line}:", routes.display())), "{l}");
    assert!(l.contains("billing-api spec.routes[0].services[0].name"), "{l}");
}

#[test]
fn invalid_expose_name_is_an_error() {
    let dir = example_copy();
    let uplink = dir.path().join("cluster-b/manifests/uplink.yaml");
    edit(&uplink, "exposeName: billing", "exposeName: Billing_API");
    let (code, lines) = lint(dir.path());
    assert_eq!(code, 1);
    let l = find(&lines, "uplink-expose-name");
    let line = line_of(&uplink, "exposeName");
    assert!(
        l.starts_with(&format!("{}:{line}:15: error: Uplink apps/billing spec.exposeName:", uplink.display())),
        "{l}"
    );
    // The parent's billing@multicluster now has no child behind it.
    find(&lines, "multicluster-unknown-uplink");
}

#[test]
fn broken_yaml_gets_exact_positions() {
    let dir = example_copy();
    let m = dir.path().join("cluster-a/manifests/crm-api.yaml");
    // Unknown field, then a wrong type in another document.
    edit(&m, "      kind: Rule\n", "      kind: Rule\n      priorty: 10\n");
    edit(&m, "    prefixes:\n      - /crm", "    prefixes: /crm");
    let (code, lines) = lint(dir.path());
    assert_eq!(code, 1);
    let unknown = lines.iter().find(|l| l.contains("unknown field `priorty`")).unwrap_or_else(|| panic!("{lines:#?}"));
    let line = line_of(&m, "priorty");
    assert!(
        unknown.starts_with(&format!(
            "{}:{line}:7: error: IngressRoute apps/crm-api spec.routes[0].priorty:",
            m.display()
        )),
        "{unknown}"
    );
    let wrong = lines.iter().find(|l| l.contains("spec.stripPrefix.prefixes")).unwrap_or_else(|| panic!("{lines:#?}"));
    let line = line_of(&m, "prefixes: /crm");
    assert!(
        wrong.starts_with(&format!("{}:{line}:15: error: Middleware apps/strip-crm-prefix", m.display())),
        "{wrong}"
    );
    assert!(wrong.contains("expected a list"), "{wrong}");

    // Bad indentation.
    let svc = dir.path().join("cluster-a/manifests/crm-service.yaml");
    edit(&svc, "  namespace: apps\nspec:", " namespace: apps\nspec:");
    let (_, lines) = lint(dir.path());
    let syntax = find(&lines, "yaml-syntax");
    assert!(syntax.starts_with(&format!("{}:5:2: error: invalid YAML", svc.display())), "{syntax}");
}

#[test]
fn json_format_carries_the_same_findings() {
    let out = atrium([Path::new("lint"), &example(), Path::new("--format"), Path::new("json")]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["errors"], 0);
    assert_eq!(v["warnings"], 2);
    let f = &v["findings"][0];
    assert_eq!(f["code"], "insecure-skip-verify");
    assert_eq!(f["severity"], "warning");
    assert!(f["line"].as_u64().unwrap() > 0);
    assert!(f["file"].as_str().unwrap().ends_with("parent/values.yaml"));
}

#[test]
fn a_plain_manifest_folder_lints_with_its_values() {
    let c = example().join("cluster-a");
    let out = atrium([Path::new("lint"), &c.join("manifests"), Path::new("--values"), &c.join("values.yaml")]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    // Without the child's values, the uplink entrypoint is unknown.
    let out = atrium([Path::new("lint"), &c.join("manifests")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("[unknown-entrypoint]"), "{}", stdout(&out));
}

#[test]
fn a_missing_path_is_an_error() {
    let out = atrium(["lint", "/nonexistent/atrium-lint-path"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("/nonexistent/atrium-lint-path"), "{}", stdout(&out));
}
