//! Runs `atrium gateway` as a real process on loopback with ephemeral ports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gateway; killed on drop.
pub struct GatewayProc {
    child: Child,
    /// Entrypoint name → bound address.
    pub entry_points: HashMap<String, SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The snapshot gRPC listener (control planes).
    pub grpc: Option<SocketAddr>,
    /// Everything it logged so far (stderr).
    pub log: Arc<Mutex<Vec<String>>>,
    /// Everything it printed so far (stdout: the access log).
    pub out: Arc<Mutex<Vec<String>>>,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(&format!("{key}="))? + key.len() + 1;
    line[i..].split_whitespace().next()
}

impl GatewayProc {
    /// Starts a gateway on `manifests` with `values`; `web` and `websecure` bind to
    /// 127.0.0.1:0 and the admin listener too. `extra` adds flags.
    pub fn start(values: Option<&Path>, manifests: &Path, extra: &[&str]) -> GatewayProc {
        let mut args: Vec<String> = vec!["gateway".into(), "--manifests".into(), manifests.display().to_string()];
        if let Some(v) = values {
            args.extend(["--values".into(), v.display().to_string()]);
        }
        for a in ["--entrypoint", "web=127.0.0.1:0", "--entrypoint", "websecure=127.0.0.1:0", "--admin", "127.0.0.1:0"]
        {
            args.push(a.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, 2, false)
    }

    /// Runs `atrium ARGS` and waits until `entry_points_wanted` entrypoints, the admin
    /// listener and (with `grpc_wanted`) the snapshot gRPC listener are up.
    pub fn spawn(args: &[String], entry_points_wanted: usize, grpc_wanted: bool) -> GatewayProc {
        Self::spawn_with_env(args, &[], entry_points_wanted, grpc_wanted)
    }

    /// [`GatewayProc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        args: &[String],
        env: &[(&str, &str)],
        entry_points_wanted: usize,
        grpc_wanted: bool,
    ) -> GatewayProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_atrium"));
        cmd.args(args).envs(env.iter().copied());
        cmd.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("atrium gateway starts");
        let stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                o.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line.clone());
                l.lock().unwrap().push(line);
            }
        });
        let mut entry_points = HashMap::new();
        let mut admin = None;
        let mut grpc = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin.is_none() || entry_points.len() < entry_points_wanted || (grpc_wanted && grpc.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!("gateway did not start; log:\n{}", log.lock().unwrap().join("\n")),
            };
            if line.contains("entrypoint listening") {
                let name = field(&line, "name").unwrap().to_string();
                entry_points.insert(name, field(&line, "addr").unwrap().parse().unwrap());
            } else if line.contains("admin listening") {
                admin = Some(field(&line, "addr").unwrap().parse().unwrap());
            } else if line.contains("snapshot gRPC listening") {
                grpc = Some(field(&line, "addr").unwrap().parse().unwrap());
            }
        }
        GatewayProc { child, entry_points, admin: admin.unwrap(), grpc, log, out }
    }

    /// The `web` entrypoint's address.
    pub fn web_addr(&self) -> std::net::SocketAddr {
        self.entry_points["web"]
    }

    /// `http://<web>` + path.
    pub fn web(&self, path: &str) -> String {
        format!("http://{}{path}", self.entry_points["web"])
    }

    /// Whether the log has a line containing `needle` now (for asserting that something was
    /// *not* logged; to wait for a line, use [`GatewayProc::wait_logged`]).
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Whether a line containing `needle` is logged within 10 s: the log is read from the
    /// process's output by another thread, so a line just written may not be there yet.
    pub async fn wait_logged(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.logged(needle) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// The first stdout line (the access log) containing `needle`, waiting up to 5 s.
    pub async fn stdout_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.out.lock().unwrap().iter().find(|l| l.contains(needle)).cloned() {
                return l;
            }
            assert!(Instant::now() < deadline, "no stdout line with {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process at once (SIGKILL): no goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits up to `limit` for the process to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
