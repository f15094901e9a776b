//! Match time for three router mixes (see BENCHMARKS.md):
//! - 10 routers;
//! - 10,000 routers as 1,000 hosts × 10 path prefixes;
//! - one host with 1,000 path prefixes (the seed's pattern at scale).
//!
//! Run: `cargo bench -p atrium-routing --bench rule_match`.
use atrium_proto::v1::{Router, Service, SnapshotBody, service};
use atrium_routing::request::RequestView;
use atrium_routing::table::RouteTable;
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use std::hint::black_box;

fn table(rules: Vec<String>) -> RouteTable {
    let body = SnapshotBody {
        routers: rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| Router {
                id: format!("bench/r{i:05}/0"),
                priority: rule.len() as i64,
                rule,
                service: "svc".into(),
                ..Default::default()
            })
            .collect(),
        services: vec![Service { id: "svc".into(), kind: Some(service::Kind::Portal(Default::default())) }],
        ..Default::default()
    };
    RouteTable::from_snapshot(&body, |_| ()).expect("bench table compiles")
}

fn bench(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route");

    let small = table((0..10).map(|i| format!("Host(`h{i}.example.com`) && PathPrefix(`/p{i}`)")).collect());
    let req = RequestView::new("GET", "h7.example.com", "/p7/items/42", None, &headers, "10.0.0.1:1234");
    assert!(small.route(None, &req).is_some());
    g.bench_function("10_routers", |b| b.iter(|| black_box(small.route(None, black_box(&req))).is_some()));

    let big = table(
        (0..1000)
            .flat_map(|h| (0..10).map(move |p| format!("Host(`h{h}.example.com`) && PathPrefix(`/p{p}`)")))
            .collect(),
    );
    let req = RequestView::new("GET", "h777.example.com", "/p7/items/42", None, &headers, "10.0.0.1:1234");
    assert!(big.route(None, &req).is_some());
    g.bench_function("1000_hosts_x_10_prefixes", |b| b.iter(|| black_box(big.route(None, black_box(&req))).is_some()));

    let one_host = table((0..1000).map(|p| format!("Host(`api.example.com`) && PathPrefix(`/svc{p:04}`)")).collect());
    let req = RequestView::new("GET", "api.example.com", "/svc0777/items/42", None, &headers, "10.0.0.1:1234");
    assert!(one_host.route(None, &req).is_some());
    g.bench_function("1_host_x_1000_prefixes", |b| {
        b.iter(|| black_box(one_host.route(None, black_box(&req))).is_some())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
