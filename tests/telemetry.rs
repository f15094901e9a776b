//! OpenTelemetry: with an OTLP endpoint configured, each request becomes a server span that
//! continues the caller's W3C trace, is exported over OTLP/gRPC, and is the parent the
//! backend sees in `traceparent`.

mod common;

use std::time::Duration;

use common::backend;
use common::gateway::GatewayProc;
use common::otlp::{self, hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_spans_that_continue_the_callers_trace() {
    let (collector_addr, mut spans) = otlp::collector().await;

    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("all.yaml"),
        common::service_manifests("ns", "svc", &[be.addr])
            + "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: api, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/api`)\n      services: [{name: svc, port: 80}]\n",
    )
    .unwrap();
    let endpoint = format!("http://{collector_addr}");
    let args: Vec<String> = ["gateway", "--manifests", tmp.path().to_str().unwrap(), "--entrypoint", "web=127.0.0.1:0"]
        .iter()
        .chain(&["--entrypoint", "websecure=off", "--admin", "127.0.0.1:0"])
        .map(|s| s.to_string())
        .collect();
    let gw = GatewayProc::spawn_with_env(
        &args,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "50")],
        1,
        false,
    );
    assert!(gw.wait_logged("exporting traces over OTLP/gRPC").await);

    // The caller's trace context: trace 4bf9…4736, its span 00f0…02b7.
    let (trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let req = hyper::Request::get(gw.web("/api/orders"))
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .body(common::client::body(""))
        .unwrap();
    let r = common::client::send(&common::client::http1(), req).await;
    assert_eq!(r.status, 200);
    let seen = r.header("x-seen-traceparent").expect("the backend got a trace context").to_string();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts[1], trace, "the backend stays in the caller's trace");
    assert_ne!(parts[2], caller_span, "the backend's parent is the gateway's span, not the caller's");

    let (service, span) = tokio::time::timeout(Duration::from_secs(10), spans.recv())
        .await
        .expect("a span is exported within 10 s")
        .unwrap();
    assert!(service.contains("atrium-gateway"), "{service}");
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), caller_span);
    assert_eq!(hex(&span.span_id), parts[2], "the exported span is the one the backend saw");
    assert_eq!(span.name, "GET");
    let attr = |k: &str| {
        span.attributes.iter().find(|a| a.key == k).and_then(|a| a.value.as_ref()).map(|v| format!("{:?}", v.value))
    };
    assert!(attr("http.response.status_code").is_some_and(|v| v.contains("200")), "{:?}", span.attributes);
    assert!(attr("atrium.router").is_some_and(|v| v.contains("ns/api/0")), "{:?}", span.attributes);
    assert!(attr("url.path").is_some_and(|v| v.contains("/api/orders")));

    // A request without a trace context starts a trace of its own.
    let r = common::client::get(&gw.web("/api/new")).await;
    let tp = r.header("x-seen-traceparent").expect("a new trace is started").to_string();
    assert_ne!(tp.split('-').nth(1), Some(trace));
}
