//! The API-management access decision at scale (see BENCHMARKS.md): 10,000 keys, 1,000
//! subscriptions over 100 APIs; a key's lookup, its subscription, and its plan's counters.
//!
//! Run: `cargo bench -p atrium-routing --bench access`.
use std::hint::black_box;
use std::time::{Duration, Instant};

use atrium_routing::apim::{Access, Application, Bucket, Counters, Limit, Plan, Subscription, Verdict, key_hash};
use criterion::{Criterion, criterion_group, criterion_main};

fn rules() -> Access {
    let apps: Vec<Application> =
        (0..1_000).map(|i| Application { app_id: format!("app-{i:04}"), suspended: false }).collect();
    let keys =
        (0..10_000).map(|i| (key_hash(&format!("key-{i:05}")), format!("app-{:04}", i % 1_000), false)).collect();
    let plan = Plan {
        id: "ns/standard".into(),
        rate: Some(Limit { limit: 1_000_000, period: Duration::from_secs(60), bucket: Bucket::Subscription }),
        quota: Some(Limit { limit: 100_000_000, period: Duration::from_secs(3600), bucket: Bucket::Subscription }),
    };
    let subs = (0..1_000)
        .map(|i| Subscription {
            id: format!("ns/sub-{i:04}"),
            weight: 0,
            applications: vec![format!("app-{i:04}")],
            apis: (0..10).map(|a| format!("ns/api-{:03}", (i + a) % 100)).collect(),
            plan: plan.clone(),
            operation_filter: None,
        })
        .collect();
    Access::new(apps, keys, subs)
}

fn bench(c: &mut Criterion) {
    let access = rules();
    let mut counters = Counters::default();
    let now = Instant::now();
    let mut g = c.benchmark_group("access");
    g.bench_function("decide_10k_keys_1k_subscriptions", |b| {
        b.iter(|| black_box(access.decide(black_box("ns/api-042"), black_box(Some("key-04242")))))
    });
    g.bench_function("decide_and_count", |b| {
        b.iter(|| match access.decide("ns/api-042", Some("key-04242")) {
            Verdict::Granted(grant) => black_box(counters.admit(&grant, now, Duration::ZERO)),
            other => panic!("{other:?}"),
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
