//! A private PostgreSQL server for a test: Debian's server binaries (installed by
//! `.ci/run`), a fresh cluster in a temporary directory, listening on a free loopback port,
//! trust authentication on loopback only. PostgreSQL refuses to run as root, so under root
//! it runs as the `postgres` user. Stopped (immediately) when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running server.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Runs `bin/tool args` as the server's user.
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Output {
    let exe = bin.join(tool);
    let out = if is_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).output()
    } else {
        Command::new(&exe).args(args).output()
    };
    out.unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
}

impl PostgresServer {
    /// Initialises and starts a cluster.
    pub fn start() -> PostgresServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (apt-get install postgresql; .ci/run does it)")
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::Builder::new().prefix("atrium-pg-").tempdir().unwrap();
        if is_root() {
            let ok =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap().success();
            assert!(ok, "chown to postgres");
        }
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        let out =
            as_postgres(&bin, "initdb", &["-D", data_s, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.path().display());
        let log = dir.path().join("server.log");
        let out = as_postgres(
            &bin,
            "pg_ctl",
            &["-D", data_s, "-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        PostgresServer { dir, bin, port }
    }

    /// A URL of database `postgres` as user `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}
