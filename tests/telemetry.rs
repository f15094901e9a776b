//! OpenTelemetry: with an OTLP endpoint configured, each request becomes a server span that
//! continues the caller's W3C trace, is exported over OTLP (gRPC or HTTP), and is the parent
//! the backend sees in `traceparent`. The sampler is configurable; bad settings stop the
//! start with the setting named.

mod common;

use std::time::Duration;

use common::backend;
use common::gateway::GatewayProc;
use common::otlp::{self, hex};

/// A gateway routing `/api` to a test backend, started with `flags` and `env`; it waits
/// until the log says `exporting`.
async fn traced_gateway(
    tmp: &tempfile::TempDir,
    be: &backend::Backend,
    flags: &[&str],
    env: &[(&str, &str)],
    exporting: &str,
) -> GatewayProc {
    std::fs::write(
        tmp.path().join("all.yaml"),
        common::service_manifests("ns", "svc", &[be.addr])
            + "---\napiVersion: traefik.io/v1alpha1\nkind: IngressRoute\nmetadata: {name: api, namespace: ns}\nspec:\n  entryPoints: [web]\n  routes:\n    - match: PathPrefix(`/api`)\n      services: [{name: svc, port: 80}]\n",
    )
    .unwrap();
    let args: Vec<String> = ["gateway", "--manifests", tmp.path().to_str().unwrap(), "--entrypoint", "web=127.0.0.1:0"]
        .iter()
        .chain(&["--entrypoint", "websecure=off", "--admin", "127.0.0.1:0"])
        .chain(flags)
        .map(|s| s.to_string())
        .collect();
    let mut env = env.to_vec();
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "50"));
    let gw = GatewayProc::spawn_with_env(&args, &env, 1, false);
    assert!(gw.wait_logged(exporting).await, "the gateway says it exports: {exporting}");
    gw
}

/// `GET path` on the gateway, with `traceparent` when given: the status and the
/// `traceparent` the backend saw.
async fn call(gw: &GatewayProc, path: &str, traceparent: Option<&str>) -> (u16, Option<String>) {
    let mut req = hyper::Request::get(gw.web(path));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = common::client::send(&common::client::http1(), req.body(common::client::body("")).unwrap()).await;
    (r.status, r.header("x-seen-traceparent").map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flag_sends_traces_over_http_to_the_collector_it_names() {
    let (collector_addr, mut spans) = otlp::http_collector().await;
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_addr}");
    // The flags win over the environment, which names a gRPC collector nobody runs.
    let flags = ["--otlp-endpoint", endpoint.as_str(), "--otlp-protocol", "http/protobuf"];
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
    let gw = traced_gateway(&tmp, &be, &flags, &env, "exporting traces over OTLP/HTTP").await;

    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let (status, seen) = call(&gw, "/api/over-http", Some(&format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    assert_eq!(status, 200);
    let seen = seen.expect("the backend got a trace context");
    let (service, span) = tokio::time::timeout(Duration::from_secs(10), spans.recv())
        .await
        .expect("a span reaches the HTTP collector within 10 s")
        .unwrap();
    assert!(service.contains("atrium-gateway"), "{service}");
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(seen.split('-').nth(2), Some(hex(&span.span_id).as_str()));
    assert_eq!(otlp::attr(&span, "url.path").as_deref(), Some("/api/over-http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ratio_starts_no_trace_but_continues_the_callers_sampled_one() {
    let (collector_addr, mut spans) = otlp::collector().await;
    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_addr}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let gw = traced_gateway(&tmp, &be, &[], &env, "exporting traces over OTLP/gRPC").await;

    // No trace context: no trace starts here, and none is made up for the backend.
    for i in 0..5 {
        let (status, seen) = call(&gw, &format!("/api/untraced/{i}"), None).await;
        assert_eq!((status, seen), (200, None));
    }
    // A sampled caller: its trace goes on, and the gateway's span is exported.
    let trace = "6bf92f3577b34da6a3ce929d0e0e4736";
    let (status, seen) = call(&gw, "/api/traced", Some(&format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    assert_eq!(status, 200);
    assert_eq!(seen.as_deref().and_then(|s| s.split('-').nth(1)), Some(trace));
    // An unsampled caller: the context goes on unsampled, nothing is exported.
    let quiet = "7bf92f3577b34da6a3ce929d0e0e4736";
    let (_, seen) = call(&gw, "/api/quiet", Some(&format!("00-{quiet}-00f067aa0ba902b7-00"))).await;
    let seen = seen.expect("an unsampled context still goes upstream");
    assert!(seen.starts_with(&format!("00-{quiet}-")) && seen.ends_with("-00"), "{seen}");

    let (_, span) =
        tokio::time::timeout(Duration::from_secs(10), spans.recv()).await.expect("a span within 10 s").unwrap();
    assert_eq!(hex(&span.trace_id), trace, "the first span exported is the sampled caller's");
    // Anything else exported in the next half second would be a span that should not be.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut others = Vec::new();
    while let Ok((_, s)) = spans.try_recv() {
        others.push(otlp::attr(&s, "url.path"));
    }
    assert!(others.is_empty(), "only the sampled caller's request is exported: {others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trace_settings_stop_the_start_and_name_the_setting() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            &[],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"), ("OTEL_TRACES_SAMPLER", "sometimes")],
            "OTEL_TRACES_SAMPLER \"sometimes\"",
        ),
        (&["--otlp-endpoint", "collector:4317"], &[], "--otlp-endpoint \"collector:4317\""),
        (
            &["--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-protocol", "http/json"],
            &[],
            "--otlp-protocol \"http/json\"",
        ),
    ];
    for (flags, env, named) in cases {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_atrium"));
        cmd.args(["gateway", "--manifests", "/nonexistent", "--entrypoint", "web=127.0.0.1:0"]).args(flags);
        cmd.envs(env.iter().copied()).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output()).await.expect("exits at once").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(named), "the error names {named}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_become_spans_that_continue_the_callers_trace() {
    let (collector_addr, mut spans) = otlp::collector().await;

    let be = backend::start("crm", "127.0.0.1").await;
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_addr}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let gw = traced_gateway(&tmp, &be, &[], &env, "exporting traces over OTLP/gRPC").await;

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
    let attr = |k: &str| otlp::attr(&span, k);
    assert!(attr("http.response.status_code").is_some_and(|v| v.contains("200")), "{:?}", span.attributes);
    assert!(attr("atrium.router").is_some_and(|v| v.contains("ns/api/0")), "{:?}", span.attributes);
    assert!(attr("url.path").is_some_and(|v| v.contains("/api/orders")));

    // A request without a trace context starts a trace of its own.
    let r = common::client::get(&gw.web("/api/new")).await;
    let tp = r.header("x-seen-traceparent").expect("a new trace is started").to_string();
    assert_ne!(tp.split('-').nth(1), Some(trace));
}
