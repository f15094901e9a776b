//! `atrium up`, the README's main command, and the seed's "Verification and Testing" run
//! against it: the embedded example comes up on this machine (parent with the portal, two
//! children, demo backends as their own processes), says "ready" only once both children are
//! connected and healthy, and then every step of the guide works at once: uplink log lines,
//! the portal and its catalog, each API from its own child with `X-Traefik-Backend`, keyed
//! calls and 401 without a key, a failing health check noticed. With `--data-planes 2`, two
//! separate data planes serve the same ports. SIGTERM stops every process.
//!
//! The example's children listen on fixed ports (127.0.0.2:8000, …): these tests run one at
//! a time (nextest group `up`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{Resp, tls_get, tls_get_with};

/// `atrium up`, its output lines (stdout and stderr); stopped with SIGTERM when dropped.
struct Up {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn start(state: &std::path::Path, extra: &[&str]) -> Up {
        // A parent address of its own, so a developer's `atrium up` on 127.0.0.1 is not
        // disturbed.
        let mut child = Command::new(env!("CARGO_BIN_EXE_atrium"))
            .args(["up", "--state-dir", state.to_str().unwrap(), "--parent-ip", "127.0.0.9", "--port-base", "18000"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    l.lock().unwrap().push(line);
                }
            });
        }
        Up { child, lines }
    }

    /// The index of the first line containing `needle`, waiting up to `limit`.
    async fn line(&self, needle: &str, limit: Duration) -> usize {
        common::eventually(limit, &format!("a line with {needle:?}"), || async {
            self.lines.lock().unwrap().iter().position(|l| l.contains(needle))
        })
        .await
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("atrium up did not stop on SIGTERM");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // SIGTERM first: `up` stops the processes it started (SIGKILL would orphan them).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const WS: &str = "127.0.0.9:18443";

/// A request to `host` on the parent's websecure entrypoint.
async fn call(host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let ws: SocketAddr = WS.parse().unwrap();
    let tls = common::client::tls_connect(ws, host, &[b"http/1.1"]).await;
    let mut h1 = common::exchanges::h1(tls).await;
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = h1.send_request(req.body(common::client::body(body.to_string())).unwrap()).await.unwrap();
    let (parts, b) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(b).await.unwrap().to_bytes();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into(),
        version: parts.version,
    }
}

fn stopped_and_ports_free(up: &mut Up) {
    up.stop();
    for addr in ["127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.2:8080", WS] {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still held after stop: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_is_ready_when_it_says_so_and_passes_the_seeds_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path(), &[]);
    let ready = up.line("atrium up: ready", Duration::from_secs(60)).await;
    let text = up.text();
    // The demo key, the users and the commands are printed with "ready".
    let key =
        text.lines().find_map(|l| l.split("Standard plan): ").nth(1)).expect("the demo key is printed").to_string();
    let otp = text
        .lines()
        .find(|l| l.contains("developers@example.com") && l.contains("one-time password"))
        .and_then(|l| l.split_whitespace().last())
        .expect("the developers user is printed")
        .to_string();
    assert!(text.contains("--host-resolver-rules") && text.contains("/etc/hosts"), "{text}");
    let bearer = format!("Bearer {key}");
    let auth = [("authorization", bearer.as_str())];

    // Ready means ready: the first calls succeed without retrying.
    // 3. Each API from its own child, with the key; the backend sees the prefix stripped.
    for (path, child, service) in [("/crm/health", "cluster-a", "crm"), ("/billing/health", "cluster-b", "billing")] {
        let r = call("api.example.com", "GET", path, &auth, "").await;
        assert_eq!(r.status, 200, "{path} right after ready: {r:?}\natrium up's output:\n{}", up.text());
        assert_eq!(r.header("x-traefik-backend"), Some(child), "{path}");
        assert!(
            r.body.contains(&format!("\"service\":\"{service}\"")) && r.body.contains("\"path\":\"/health\""),
            "{}",
            r.body
        );
    }
    for (path, service) in [("/crm/employees", "crm"), ("/billing/invoices", "billing")] {
        let (_, _, r) = tls_get_with(WS.parse().unwrap(), "api.example.com", path, &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.body.contains(&format!("\"service\":\"{service}\"")), "{}", r.body);
    }
    // Without a key: 401 (API-key authentication is the default, as in Traefik Hub).
    let (_, _, r) = tls_get(WS.parse().unwrap(), "api.example.com", "/crm/employees").await;
    assert_eq!(r.status, 401, "{}", r.body);

    // 1. The parent logged its uplinks to both children before "ready".
    let before: Vec<String> = up.lines.lock().unwrap()[..ready].to_vec();
    for child in ["cluster-a", "cluster-b"] {
        assert!(before.iter().any(|l| l.contains("uplink") && l.contains(child)), "no uplink line for {child}");
    }

    // 2. The portal answers, and the developers' catalog shows both APIs with Standard.
    let r = call("portal.example.com", "GET", "/login", &[], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let login = format!(r#"{{"email":"developers@example.com","password":"{otp}"}}"#);
    let r = call("portal.example.com", "POST", "/api/login", &[("content-type", "application/json")], &login).await;
    assert_eq!(r.status, 200, "{r:?}");
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let csrf = serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["csrf"].as_str().unwrap().to_string();
    let origin = "https://portal.example.com:18443";
    let session = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
        ("origin", origin),
        ("content-type", "application/json"),
    ];
    let change = format!(r#"{{"current":"{otp}","new":"a-long-enough-password"}}"#);
    let r = call("portal.example.com", "POST", "/api/account/password", &session, &change).await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = call("portal.example.com", "GET", "/api/catalog", &session[..1], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    let catalog: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let apis: Vec<String> = catalog["apis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let plans: Vec<&str> = a["catalog_items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["plan"]["title"].as_str().unwrap_or(""))
                .collect();
            format!("{} ({})", a["title"].as_str().unwrap(), plans.join(", "))
        })
        .collect();
    assert_eq!(apis.len(), 2, "{apis:?}");
    assert!(apis.iter().all(|a| a.contains("Standard")), "{apis:?}");

    // 5. A failing health check is noticed within its interval (5 s in the guide): crm's
    // endpoint moves to a port nothing listens on, so its health check fails; crm answers
    // 503 and billing keeps working.
    let endpoints = tmp.path().join("example/cluster-a/manifests/crm-endpoints.yaml");
    let text = std::fs::read_to_string(&endpoints).unwrap();
    assert!(text.contains("port: 8080"), "{text}");
    std::fs::write(&endpoints, text.replace("port: 8080", "port: 8081")).unwrap();
    let t = Instant::now();
    // Polled every 300 ms: the demo key's Standard plan allows 100 requests a minute.
    loop {
        let status = call("api.example.com", "GET", "/crm/health", &auth, "").await.status;
        if status == 503 {
            break;
        }
        // Until the check fails, requests still reach cluster-a, whose backend is gone: 502.
        assert!(status == 200 || status == 502, "{status}");
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "not noticed after {:?} (interval 5 s, timeout 3 s)",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let r = call("api.example.com", "GET", "/billing/health", &auth, "").await;
    assert_eq!(r.status, 200, "{r:?}");
    stopped_and_ports_free(&mut up);

    // Running it twice works: the same state (CA, key, users) is used again.
    std::fs::write(&endpoints, text).unwrap();
    let mut again = Up::start(tmp.path(), &[]);
    again.line("atrium up: ready", Duration::from_secs(60)).await;
    assert!(again.text().contains(&key), "the same demo key");
    let r = call("api.example.com", "GET", "/crm/employees", &auth, "").await;
    assert_eq!(r.status, 200, "{r:?}");
    stopped_and_ports_free(&mut again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_separate_data_planes_serves_the_same_ports() {
    // Its global flags reach every process it starts: each exports its own spans.
    let (collector, mut spans) = common::otlp::collector().await;
    let endpoint = format!("http://{collector}");
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path(), &["--data-planes", "2", "--otlp-endpoint", &endpoint]);
    up.line("atrium up: ready", Duration::from_secs(60)).await;
    let text = up.text();
    let key = text.lines().find_map(|l| l.split("Standard plan): ").nth(1)).unwrap().to_string();
    let bearer = format!("Bearer {key}");
    // Many connections: the kernel spreads them over both data planes.
    for _ in 0..20 {
        let (_, _, r) =
            tls_get_with(WS.parse().unwrap(), "api.example.com", "/crm/employees", &[("authorization", &bearer)]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let admin: SocketAddr = "127.0.0.9:19000".parse().unwrap();
    let nodes = common::client::get(&format!("http://{admin}/api/dataplanes")).await;
    let v: serde_json::Value = serde_json::from_str(&nodes.body).unwrap();
    let dps = v["dataplanes"].as_object().unwrap();
    assert_eq!(dps.len(), 2, "{v}");
    assert!(dps.values().all(|n| n["connected"] == true && n["current"] == true), "{v}");
    // Both served some of the connections (SO_REUSEPORT spreads them by their addresses).
    for port in [19100, 19101] {
        let m = common::client::get(&format!("http://127.0.0.9:{port}/metrics")).await.body;
        let served: u64 = m
            .lines()
            .filter(|l| l.starts_with("atrium_requests_total{") && l.contains("code=\"200\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(served >= 1, "data plane on :{port} served nothing:\n{m}");
    }
    let mut services = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(services.iter().any(|s: &String| s.contains("atrium-data-plane"))
        && services.iter().any(|s: &String| s.contains("atrium-agent-cluster-a")))
    {
        match tokio::time::timeout_at(deadline, spans.recv()).await {
            Ok(Some((service, _))) => {
                services.insert(service);
            }
            _ => panic!("spans from the data planes and cluster-a's agent within 20 s; got {services:?}"),
        }
    }
    stopped_and_ports_free(&mut up);
}
