//! `atrium up`, the README's main command: the embedded example comes up on this machine
//! (parent, two children, demo backends), routes each API to its child, and stops every
//! process it started on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::client::{tls_get, tls_get_with};

/// Kills `atrium up` if the test fails before stopping it.
struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_example_and_stops_everything() {
    let tmp = tempfile::tempdir().unwrap();
    // A parent address of its own, so a developer's `atrium up` on 127.0.0.1 is not disturbed.
    let mut up = Up(Command::new(env!("CARGO_BIN_EXE_atrium"))
        .args(["up", "--state-dir", tmp.path().to_str().unwrap(), "--parent-ip", "127.0.0.9", "--port-base", "18000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let ws: SocketAddr = "127.0.0.9:18443".parse().unwrap();
    // The demo application's key, generated at the first start.
    let demo = tmp.path().join("example/parent/manifests/demo-application.yaml");
    let key = common::eventually(Duration::from_secs(30), "the demo application", || async {
        let text = std::fs::read_to_string(&demo).ok()?;
        text.lines().find_map(|l| l.trim().strip_prefix("- value: ")).map(str::to_string)
    })
    .await;
    let bearer = format!("Bearer {key}");

    // Each API answers from the backend of the child that serves it.
    for (path, service) in [("/crm/customers", "\"service\":\"crm\""), ("/billing/invoices", "\"service\":\"billing\"")]
    {
        let what = format!("{path} answering 200");
        let r = common::eventually(Duration::from_secs(30), &what, || async {
            tokio::net::TcpStream::connect(ws).await.ok()?;
            let (_, _, r) = tls_get_with(ws, "api.example.com", path, &[("authorization", &bearer)]).await;
            (r.status == 200).then_some(r)
        })
        .await;
        assert!(r.body.contains(service), "{path} answered by the wrong backend: {}", r.body);
        // The child's backend sees the prefix stripped and the parent's port.
        assert!(r.body.contains(&format!("\"path\":\"/{}\"", path.rsplit('/').next().unwrap())), "{}", r.body);
        assert!(r.body.contains("\"x-forwarded-port\":\"443\""), "{}", r.body);
    }
    // Without the key, an API route answers 401 (API-key authentication is the default).
    let (_, _, r) = tls_get(ws, "api.example.com", "/crm/customers").await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    // An unknown path is a 404 from the parent, not a child's answer.
    let (_, _, r) = tls_get(ws, "api.example.com", "/nope").await;
    assert_eq!(r.status, 404);

    // The generated state: one CA, a certificate per component, the example's manifests.
    for f in
        ["pki/ca.pem", "pki/cluster-a.pem", "pki/cluster-b.pem", "pki/control-plane.pem", "example/parent/values.yaml"]
    {
        assert!(tmp.path().join(f).is_file(), "{f} missing");
    }

    // SIGTERM stops `up` and every process it started: the children's ports are free again.
    Command::new("kill").arg("-TERM").arg(up.0.id().to_string()).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "atrium up did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    for addr in ["127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.9:18443"] {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still held after stop: {e}"));
    }
}
